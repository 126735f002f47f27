package service

import (
	"encoding/json"
	"slices"
	"strings"
)

// AnnotationTargetGroups is written by the lb-controller, not by users: the
// ARNs of the target groups its last deploy pass ensured for the Service,
// a JSON list. It is shared state that every replica reads from its
// informer cache — a standby answers a drain wait from it without a cloud
// listing, and it outlives the leader's memory.
const AnnotationTargetGroups = "directlb.io/target-groups"

// RecordTargetGroups is the annotation value for arns (sorted, so an
// unchanged set writes nothing).
func RecordTargetGroups(arns []string) string {
	s := slices.Clone(arns)
	slices.Sort(s)
	s = slices.Compact(s)
	if s == nil {
		s = []string{}
	}
	b, _ := json.Marshal(s) // a []string always marshals
	return string(b)
}

// RecordedTargetGroups are the ARNs recorded on the Service, nil when
// none (or the value is not a JSON list: a hand-edited annotation counts
// as none, and the next deploy pass rewrites it).
func RecordedTargetGroups(annotations map[string]string) []string {
	v, ok := annotations[AnnotationTargetGroups]
	if !ok || !strings.HasPrefix(strings.TrimSpace(v), "[") {
		return nil
	}
	var arns []string
	if err := json.Unmarshal([]byte(v), &arns); err != nil {
		return nil
	}
	return slices.DeleteFunc(arns, func(a string) bool { return a == "" })
}
