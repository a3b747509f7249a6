// Package mlog stands in for monis.app/mlog with the functions the Secrets Store CSI Driver
// calls, logging through klog.
package mlog

import (
	"context"
	"fmt"
	"os"

	"k8s.io/klog/v2"
)

// LogFormat is the output format of the logs.
type LogFormat string

const (
	// FormatText is klog's text format.
	FormatText LogFormat = "text"
	// FormatJSON asks for JSON; this stand-in keeps klog's text format.
	FormatJSON LogFormat = "json"
)

// Setup returns a function that flushes the logs.
func Setup() func() {
	return klog.Flush
}

// ValidateAndSetKlogLevelAndFormatGlobally checks the level and format; klog keeps its flags.
func ValidateAndSetKlogLevelAndFormatGlobally(_ context.Context, level klog.Level, format LogFormat) error {
	if level < 0 {
		return fmt.Errorf("invalid log level %d", level)
	}
	if format != FormatText && format != FormatJSON {
		return fmt.Errorf("unknown log format %q", format)
	}
	return nil
}

// Error logs an error with a message and key/value pairs.
func Error(msg string, err error, keysAndValues ...any) {
	klog.ErrorS(err, msg, keysAndValues...)
}

// Fatal logs an error and exits.
func Fatal(err error, keysAndValues ...any) {
	klog.ErrorS(err, "fatal error", keysAndValues...)
	klog.Flush()
	os.Exit(1)
}
