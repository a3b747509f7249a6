package main

// Certificates and keys for one throw-away control plane: a CA that signs the apiserver's
// serving certificate and the admin client certificate, and the service-account signing key.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

type keyPair struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
	keyPEM  []byte
}

type pki struct {
	ca        keyPair
	serving   keyPair
	admin     keyPair
	saKeyPEM  []byte
	saPubPEM  []byte
	caPath    string
	certPaths map[string]string
	// The node's certificates by name (writeNodePKI).
	issued map[string]keyPair
}

func newKeyPair(tmpl *x509.Certificate, parent *keyPair) (keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return keyPair{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return keyPair{}, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(7 * 24 * time.Hour)
	signerCert, signerKey := tmpl, key
	if parent != nil {
		signerCert, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signerCert, &key.PublicKey, signerKey)
	if err != nil {
		return keyPair{}, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return keyPair{}, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return keyPair{}, err
	}
	return keyPair{
		cert:    cert,
		key:     key,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

// writePKI creates every certificate and key in dir (mode 0600) and returns their paths.
func writePKI(dir string) (*pki, error) {
	p := &pki{certPaths: map[string]string{}}
	var err error
	if p.ca, err = newKeyPair(&x509.Certificate{
		Subject:               pkix.Name{CommonName: "vaultsync-test-ca"},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}, nil); err != nil {
		return nil, err
	}
	if p.serving, err = newKeyPair(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.0.0.1")},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, &p.ca); err != nil {
		return nil, err
	}
	if p.admin, err = newKeyPair(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "admin", Organization: []string{"system:masters"}},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, &p.ca); err != nil {
		return nil, err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	saDER, err := x509.MarshalECPrivateKey(saKey)
	if err != nil {
		return nil, err
	}
	saPubDER, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	p.saKeyPEM = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: saDER})
	p.saPubPEM = pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPubDER})

	files := map[string][]byte{
		"ca.crt":      p.ca.certPEM,
		"ca.key":      p.ca.keyPEM,
		"serving.crt": p.serving.certPEM,
		"serving.key": p.serving.keyPEM,
		"admin.crt":   p.admin.certPEM,
		"admin.key":   p.admin.keyPEM,
		"sa.key":      p.saKeyPEM,
		"sa.pub":      p.saPubPEM,
	}
	for name, data := range files {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return nil, err
		}
		p.certPaths[name] = path
	}
	p.caPath = p.certPaths["ca.crt"]
	return p, nil
}

// writeNodePKI adds what a node needs, signed by the same CA: the kubelet's serving certificate
// (for the node's loopback address), the kubelet's client certificate (user system:node:<name> in
// group system:nodes, as the Node authorizer expects) and the apiserver's client certificate for
// calling the kubelet (logs, exec).
func (p *pki) writeNodePKI(dir, nodeName string, nodeIP net.IP) error {
	certs := map[string]*x509.Certificate{
		"kubelet-serving": {
			Subject:     pkix.Name{CommonName: nodeName},
			DNSNames:    []string{"localhost"},
			IPAddresses: []net.IP{nodeIP},
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		},
		"kubelet-client": {
			Subject:     pkix.Name{CommonName: "system:node:" + nodeName, Organization: []string{"system:nodes"}},
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		},
		"apiserver-kubelet-client": {
			Subject:     pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}},
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		},
	}
	for name, tmpl := range certs {
		pair, err := newKeyPair(tmpl, &p.ca)
		if err != nil {
			return err
		}
		if p.issued == nil {
			p.issued = map[string]keyPair{}
		}
		p.issued[name] = pair
		for suffix, data := range map[string][]byte{".crt": pair.certPEM, ".key": pair.keyPEM} {
			path := filepath.Join(dir, name+suffix)
			if err := os.WriteFile(path, data, 0o600); err != nil {
				return err
			}
			p.certPaths[name+suffix] = path
		}
	}
	return nil
}
