package spec

import (
	"fmt"
	"strconv"
	"strings"
)

// ReleaseVersion is a numbered version, vMAJOR.MINOR.PATCH with an optional
// pre-release (-rc.1) and build suffix (+abc), ordered as semantic versioning
// orders them (the build suffix does not count).
type ReleaseVersion struct {
	Major, Minor, Patch uint64
	// Pre is the pre-release part without its dash ("" for a release).
	Pre string
}

// ParseReleaseVersion reads s as vMAJOR.MINOR.PATCH[-PRE][+BUILD] (the
// leading v is required; numbers without leading zeros). ok is false for
// anything else: "dev", a test build's name, a git description.
func ParseReleaseVersion(s string) (v ReleaseVersion, ok bool) {
	rest, found := strings.CutPrefix(s, "v")
	if !found {
		return v, false
	}
	if i := strings.IndexByte(rest, '+'); i >= 0 {
		if !validIdents(rest[i+1:], false) {
			return v, false
		}
		rest = rest[:i]
	}
	if i := strings.IndexByte(rest, '-'); i >= 0 {
		v.Pre = rest[i+1:]
		if !validIdents(v.Pre, true) {
			return ReleaseVersion{}, false
		}
		rest = rest[:i]
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 3 {
		return ReleaseVersion{}, false
	}
	nums := [3]*uint64{&v.Major, &v.Minor, &v.Patch}
	for i, p := range parts {
		if !isNumber(p) {
			return ReleaseVersion{}, false
		}
		n, err := strconv.ParseUint(p, 10, 64)
		if err != nil {
			return ReleaseVersion{}, false
		}
		*nums[i] = n
	}
	return v, true
}

// MustParseReleaseVersion is ParseReleaseVersion for constants.
func MustParseReleaseVersion(s string) ReleaseVersion {
	v, ok := ParseReleaseVersion(s)
	if !ok {
		panic(fmt.Sprintf("spec: %q is not vMAJOR.MINOR.PATCH", s))
	}
	return v
}

// String is the version as vMAJOR.MINOR.PATCH[-PRE].
func (v ReleaseVersion) String() string {
	s := fmt.Sprintf("v%d.%d.%d", v.Major, v.Minor, v.Patch)
	if v.Pre != "" {
		s += "-" + v.Pre
	}
	return s
}

// Compare returns -1, 0 or +1 as v is older than, the same as or newer than w.
// A pre-release is older than its release; pre-releases compare identifier
// by identifier, numbers numerically and below words.
func (v ReleaseVersion) Compare(w ReleaseVersion) int {
	for _, d := range [3][2]uint64{{v.Major, w.Major}, {v.Minor, w.Minor}, {v.Patch, w.Patch}} {
		if d[0] != d[1] {
			if d[0] < d[1] {
				return -1
			}
			return 1
		}
	}
	switch {
	case v.Pre == w.Pre:
		return 0
	case v.Pre == "":
		return 1
	case w.Pre == "":
		return -1
	}
	a, b := strings.Split(v.Pre, "."), strings.Split(w.Pre, ".")
	for i := 0; i < len(a) && i < len(b); i++ {
		if c := compareIdent(a[i], b[i]); c != 0 {
			return c
		}
	}
	switch {
	case len(a) < len(b):
		return -1
	case len(a) > len(b):
		return 1
	}
	return 0
}

func compareIdent(a, b string) int {
	an, bn := isNumber(a), isNumber(b)
	switch {
	case an && bn:
		if len(a) != len(b) {
			if len(a) < len(b) {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	case an:
		return -1
	case bn:
		return 1
	}
	return strings.Compare(a, b)
}

// isNumber: digits without a leading zero (0 itself allowed).
func isNumber(s string) bool {
	if s == "" || (len(s) > 1 && s[0] == '0') {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// validIdents: dot-separated non-empty [0-9A-Za-z-] identifiers (numeric
// ones without leading zeros when strictNumbers, as pre-releases require).
func validIdents(s string, strictNumbers bool) bool {
	if s == "" {
		return false
	}
	for _, id := range strings.Split(s, ".") {
		if id == "" {
			return false
		}
		digits := true
		for _, c := range id {
			switch {
			case c >= '0' && c <= '9':
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '-':
				digits = false
			default:
				return false
			}
		}
		if strictNumbers && digits && !isNumber(id) {
			return false
		}
	}
	return true
}
