package gossip

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
)

// ErrInvalidKey is wrapped by every LoadKey error about the content of a key
// file (empty, not base64, wrong length, too large).
var ErrInvalidKey = errors.New("invalid gossip key")

// maxKeyFileSize bounds what LoadKey reads: a key file holds at most 44
// base64 characters plus whitespace.
const maxKeyFileSize = 1024

// GenerateKey returns a new key for a key file: the standard base64 encoding
// of 32 random bytes (AES-256).
func GenerateKey() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate gossip key: %w", err)
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// LoadKey reads a key file: base64 (standard, padding optional) of 16, 24 or
// 32 bytes, surrounding whitespace ignored. Errors name the path and what is
// wrong with it.
func LoadKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("gossip key file %s: %w", path, unwrapPath(err))
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("gossip key file %s: read: %w", path, unwrapPath(err))
	}
	if len(raw) > maxKeyFileSize {
		return nil, fmt.Errorf("gossip key file %s: larger than %d bytes: %w", path, maxKeyFileSize, ErrInvalidKey)
	}
	return ParseKey(path, string(raw))
}

// ParseKey decodes the content of a key file; name says where it came from
// in errors.
func ParseKey(name, text string) ([]byte, error) {
	s := strings.TrimSpace(text)
	if s == "" {
		return nil, fmt.Errorf("gossip key file %s: empty: %w", name, ErrInvalidKey)
	}
	enc := base64.StdEncoding
	if !strings.HasSuffix(s, "=") && len(s)%4 != 0 {
		enc = base64.RawStdEncoding
	}
	key, err := enc.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("gossip key file %s: not base64 (%v): %w", name, err, ErrInvalidKey)
	}
	switch len(key) {
	case 16, 24, 32:
		return key, nil
	}
	return nil, fmt.Errorf("gossip key file %s: key is %d bytes, want 16, 24 or 32 (use `fleetwave gossip keygen`): %w",
		name, len(key), ErrInvalidKey)
}

// unwrapPath drops the path from an *fs.PathError (the caller names it).
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
