package kubelet

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// PodState is what the stand-in keeps on disk per pod
// (<StateDir>/nodes/<node>/pods/<uid>.json) so that a restarted stand-in
// adopts its pods instead of orphaning them.
type PodState struct {
	UID         types.UID  `json:"uid"`
	Namespace   string     `json:"namespace"`
	Name        string     `json:"name"`
	HostNetwork bool       `json:"hostNetwork,omitempty"`
	Group       string     `json:"group,omitempty"`    // controller UID, for spreading over ENIs
	NetNS       string     `json:"netns"`              // pod netns name (the node's for hostNetwork)
	HostVeth    string     `json:"hostVeth,omitempty"` // node-side veth
	IP          netip.Addr `json:"ip"`
	ENI         int        `json:"eni"` // index of the ENI the address belongs to
	ENIDevice   string     `json:"eniDevice,omitempty"`
	ENIID       string     `json:"eniID,omitempty"`
	Cgroup      string     `json:"cgroup"`
	StartTime   time.Time  `json:"startTime"`
	// NetworkReady is set once the sandbox's network is complete.
	NetworkReady bool                       `json:"networkReady"`
	Containers   map[string]*ContainerState `json:"containers"`
}

// ContainerState is one container's process and history.
type ContainerState struct {
	PID          int        `json:"pid,omitempty"`
	StartTicks   uint64     `json:"startTicks,omitempty"`
	StartedAt    time.Time  `json:"startedAt,omitzero"`
	RestartCount int32      `json:"restartCount"`
	LastExit     *ExitState `json:"lastExit,omitempty"`
}

// ExitState is how a container instance ended.
type ExitState struct {
	ExitCode   int32     `json:"exitCode"`
	Reason     string    `json:"reason"`
	StartedAt  time.Time `json:"startedAt"`
	FinishedAt time.Time `json:"finishedAt"`
}

type stateStore struct{ dir string }

func (s stateStore) path(uid types.UID) string { return filepath.Join(s.dir, string(uid)+".json") }

func (s stateStore) save(st *PodState) error {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := s.path(st.UID) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("write pod state: %w", err)
	}
	if err := os.Rename(tmp, s.path(st.UID)); err != nil {
		return fmt.Errorf("write pod state: %w", err)
	}
	return nil
}

func (s stateStore) remove(uid types.UID) error {
	if err := os.Remove(s.path(uid)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove pod state: %w", err)
	}
	return nil
}

func (s stateStore) loadAll() ([]*PodState, error) {
	ents, err := os.ReadDir(s.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state dir: %w", err)
	}
	var out []*PodState
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("read pod state: %w", err)
		}
		var st PodState
		if err := json.Unmarshal(b, &st); err != nil {
			return nil, fmt.Errorf("parse pod state %s: %w", e.Name(), err)
		}
		if st.Containers == nil {
			st.Containers = map[string]*ContainerState{}
		}
		out = append(out, &st)
	}
	return out, nil
}
