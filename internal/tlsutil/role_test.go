package tlsutil

import "testing"

func TestRoleIncludes(t *testing.T) {
	for _, tc := range []struct {
		role, want string
		ok         bool
	}{
		{RoleViewer, RoleViewer, true}, {RoleViewer, RoleDeployer, false}, {RoleViewer, RoleAdmin, false},
		{RoleDeployer, RoleViewer, true}, {RoleDeployer, RoleDeployer, true}, {RoleDeployer, RoleAdmin, false},
		{RoleAdmin, RoleViewer, true}, {RoleAdmin, RoleAdmin, true},
		{"", RoleViewer, false}, {"root", RoleViewer, false}, {"join", RoleViewer, false},
	} {
		if got := RoleIncludes(tc.role, tc.want); got != tc.ok {
			t.Errorf("RoleIncludes(%q, %q) = %v, want %v", tc.role, tc.want, got, tc.ok)
		}
	}
}
