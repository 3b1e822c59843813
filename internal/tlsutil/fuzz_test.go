package tlsutil

import (
	"crypto/rand"
	"crypto/x509"
	"net/url"
	"testing"
	"time"
)

// FuzzSignCSR feeds random bytes to SignCSR: it must never panic, and what
// it signs must be for the request's key and carry exactly the given
// identity.
func FuzzSignCSR(f *testing.F) {
	ca, err := NewCA("fuzz CA", time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	key, _, err := GenerateKey()
	if err != nil {
		f.Fatal(err)
	}
	csr, err := NewCSR(key)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(csr)
	f.Add(csr[:len(csr)-1])
	f.Add([]byte{})
	f.Add([]byte{0x30, 0x82, 0xff, 0xff})
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----"))
	f.Add(ca.Cert.Raw)
	id := Identity{Kind: KindAgent, Name: "host-1"}
	f.Fuzz(func(t *testing.T, der []byte) {
		certPEM, _, err := ca.SignCSR(der, id, time.Hour)
		if err != nil {
			return
		}
		req, err := x509.ParseCertificateRequest(der)
		if err != nil {
			t.Fatalf("signed a request that does not parse: %v", err)
		}
		certs, err := parseCertsPEM(certPEM)
		if err != nil {
			t.Fatal(err)
		}
		got, err := IdentityFromCert(certs[0])
		if err != nil || got != id {
			t.Fatalf("identity %+v, %v; want %+v", got, err, id)
		}
		if !publicKeysEqual(req.PublicKey, certs[0].PublicKey) {
			t.Fatal("certificate is not for the request's key")
		}
	})
}

// FuzzIdentityURI parses random strings as identity URIs, directly and as a
// certificate's URI SAN: never a panic, and whatever is accepted is the
// canonical form of a valid identity.
func FuzzIdentityURI(f *testing.F) {
	ca, err := NewCA("fuzz CA", time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	key, _, err := GenerateKey()
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{
		"fleetwave://agent/host-1",
		"fleetwave://operator/alice?role=admin",
		"fleetwave://coordinator/c1",
		"fleetwave://operator/alice?role=admin&role=viewer",
		"fleetwave://agent/host%2F1",
		"fleetwave://agent:1/x",
		"FLEETWAVE://agent/h",
		"",
	} {
		f.Add(s)
	}
	now := time.Now()
	f.Fuzz(func(t *testing.T, s string) {
		if id, err := ParseIdentity(s); err == nil {
			if verr := id.Validate(); verr != nil {
				t.Fatalf("ParseIdentity(%q) accepted invalid %+v: %v", s, id, verr)
			}
			if back, err := ParseIdentity(id.URI().String()); err != nil || back != id {
				t.Fatalf("round trip of %+v: %+v, %v", id, back, err)
			}
		}
		u, err := url.Parse(s)
		if err != nil {
			return
		}
		tmpl := &x509.Certificate{SerialNumber: ca.Cert.SerialNumber, NotBefore: now, NotAfter: now.Add(time.Hour), URIs: []*url.URL{u}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
		if err != nil {
			return
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return
		}
		if id, err := IdentityFromCert(c); err == nil {
			if verr := id.Validate(); verr != nil {
				t.Fatalf("IdentityFromCert(%q) accepted invalid %+v: %v", s, id, verr)
			}
		}
	})
}
