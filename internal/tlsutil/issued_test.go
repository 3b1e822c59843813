package tlsutil

import (
	"bytes"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestCheckIssued: a chain from the join CA (leaf and intermediate) for the
// key and identity asked for passes against the root alone; without its
// intermediate, after its expiry, or naming another host it is refused.
func TestCheckIssued(t *testing.T) {
	root, err := NewCA("root", 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	join, err := root.NewJoinCA("join", 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	key, _, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	h1 := Identity{Kind: KindAgent, Name: "h1"}
	chain, notAfter, err := join.SignCSR(csr, h1, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	roots := poolOf(root.Cert)
	now := time.Now()
	if err := CheckIssued(chain, key.Public(), roots, h1, now); err != nil {
		t.Fatalf("the join CA's chain: %v", err)
	}
	// Dated after a revocation recorded by a coordinator whose clock runs
	// 5 minutes ahead (SignCSRAfter): valid from 4 minutes on, accepted.
	later, _, err := join.SignCSRAfter(csr, h1, time.Hour, now.Add(5*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckIssued(later, key.Public(), roots, h1, now); err != nil {
		t.Fatalf("a certificate valid from 4 minutes on: %v", err)
	}
	much, _, err := join.SignCSRAfter(csr, h1, time.Hour, now.Add(2*MaxIssuedAhead))
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckIssued(much, key.Public(), roots, h1, now); !errors.Is(err, ErrBadIssued) || !strings.Contains(err.Error(), "not yet valid") {
		t.Fatalf("a certificate valid only from 2 hours on: %v, want ErrBadIssued", err)
	}
	leafOnly := pem.EncodeToMemory(func() *pem.Block { b, _ := pem.Decode(chain); return b }())
	if bytes.Equal(leafOnly, chain) {
		t.Fatal("the join CA's answer holds no intermediate")
	}
	for name, err := range map[string]error{
		"without its intermediate": CheckIssued(leafOnly, key.Public(), roots, h1, now),
		"after its expiry":         CheckIssued(chain, key.Public(), roots, h1, notAfter.Add(time.Second)),
		"naming another host":      CheckIssued(chain, key.Public(), roots, Identity{Kind: KindAgent, Name: "h2"}, now),
	} {
		if !errors.Is(err, ErrBadIssued) {
			t.Errorf("%s: %v, want ErrBadIssued", name, err)
		}
	}
}
