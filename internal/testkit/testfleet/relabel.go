package testfleet

import (
	"fmt"
	"time"
)

// Relabel restarts agent id with labels instead of the ones it has (an
// agent's labels change only when it starts). It stops the agent with
// SIGTERM first: its services keep running and the new agent adopts them.
func (f *Fleet) Relabel(id, labels string) error {
	a, ok := f.Agents[id]
	if !ok {
		return fmt.Errorf("relabel: no agent %s", id)
	}
	a.Stop(10 * time.Second)
	found := false
	for i := range a.args {
		if a.args[i] == "--labels" && i+1 < len(a.args) {
			a.args[i+1] = labels
			found = true
		}
	}
	if !found {
		return fmt.Errorf("relabel %s: no --labels argument", id)
	}
	return a.Restart()
}

// Labels is the --labels argument AddAgent gives agent id with role
// instead of web.
func (f *Fleet) Labels(id, role string) string {
	a := f.Agents[id]
	return fmt.Sprintf("zone=%s,role=%s,port=%d", a.Zone, role, a.Port)
}
