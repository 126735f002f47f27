package service

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestRecordedTargetGroups(t *testing.T) {
	tests := []struct {
		name  string
		value *string
		want  []string
	}{
		{name: "absent"},
		{name: "empty list", value: ptr(`[]`), want: []string{}},
		{name: "two", value: ptr(`["arn:b","arn:a"]`), want: []string{"arn:b", "arn:a"}},
		{name: "not JSON", value: ptr(`arn:a,arn:b`)},
		{name: "broken JSON", value: ptr(`["arn:a"`)},
		{name: "empty strings dropped", value: ptr(`["","arn:a"]`), want: []string{"arn:a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ann := map[string]string{}
			if tt.value != nil {
				ann[AnnotationTargetGroups] = *tt.value
			}
			if diff := cmp.Diff(tt.want, RecordedTargetGroups(ann)); diff != "" {
				t.Fatalf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestRecordTargetGroupsRoundTrip(t *testing.T) {
	if got := RecordTargetGroups([]string{"arn:b", "arn:a", "arn:b"}); got != `["arn:a","arn:b"]` {
		t.Fatalf("RecordTargetGroups = %s", got)
	}
	if got := RecordTargetGroups(nil); got != `[]` {
		t.Fatalf("RecordTargetGroups(nil) = %s", got)
	}
	ann := map[string]string{AnnotationTargetGroups: RecordTargetGroups([]string{"arn:x"})}
	if diff := cmp.Diff([]string{"arn:x"}, RecordedTargetGroups(ann)); diff != "" {
		t.Fatal(diff)
	}
}

func ptr[T any](v T) *T { return &v }
