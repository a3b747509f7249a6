//! A test workload: reports the values of the environment variables and files it is told to watch,
//! once at start and again whenever one changes, one line each, until SIGTERM or SIGINT:
//!
//! ```text
//! vaultsync-workload --env DB_PASSWORD --file /etc/secret/password
//! env DB_PASSWORD="v1"
//! file /etc/secret/password="v1"
//! ```
//!
//! Values are printed quoted and escaped. It is for tests: it prints the (test) secrets it reads.

use std::{collections::BTreeMap, io::Write as _, time::Duration};

use nix::sys::signal::Signal;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut watched = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--env" => watched.push(("env", value)),
            "--file" => watched.push(("file", value)),
            _ => {
                return Err(format!(
                    "unknown argument {flag}; usage: vaultsync-workload [--env NAME] [--file PATH]..."
                )
                .into());
            }
        }
    }
    // Blocked before the reporter starts, so only this thread takes the stop signal.
    let signals = vaultsync_images::block(&[Signal::SIGTERM, Signal::SIGINT])?;
    std::thread::spawn(move || report(&watched));
    signals.wait()?;
    Ok(())
}

fn report(watched: &[(&'static str, String)]) {
    let mut last: BTreeMap<usize, String> = BTreeMap::new();
    loop {
        for (i, (kind, name)) in watched.iter().enumerate() {
            let seen = match *kind {
                "env" => std::env::var(name).map(|v| format!("{v:?}")).unwrap_or_else(|_| "unset".into()),
                _ => std::fs::read_to_string(name).map(|v| format!("{v:?}")).unwrap_or_else(|_| "missing".into()),
            };
            if last.get(&i) != Some(&seen) {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{kind} {name}={seen}");
                let _ = out.flush();
                last.insert(i, seen);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
