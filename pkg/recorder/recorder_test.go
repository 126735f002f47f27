package recorder

import (
	"strings"
	"testing"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/events"
)

func TestTruncate(t *testing.T) {
	for _, tc := range []struct {
		s    string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{"0123456789abc", 10, "012345 …"},
		{"ééééé", 8, "éé …"}, // 2-byte runes are never split
	} {
		got := Truncate(tc.s, tc.n)
		if got != tc.want {
			t.Errorf("Truncate(%q, %d) = %q, want %q", tc.s, tc.n, got, tc.want)
		}
		if len(got) > tc.n || !utf8.ValidString(got) {
			t.Errorf("Truncate(%q, %d) = %q: %d bytes, valid %v", tc.s, tc.n, got, len(got), utf8.ValidString(got))
		}
	}
}

func TestRecorderCutsLongNotes(t *testing.T) {
	fake := events.NewFakeRecorder(2)
	r := New(fake)
	long := strings.Repeat("x", 5000)
	r.Eventf(&corev1.Service{}, nil, corev1.EventTypeWarning, "InvalidConfiguration", "Validate", "bad annotation %s", long)
	got := <-fake.Events
	// The fake prints "<type> <reason> <note>".
	note := strings.TrimPrefix(got, "Warning InvalidConfiguration ")
	if len(note) > MaxNote || !strings.HasPrefix(note, "bad annotation xxx") || !strings.HasSuffix(note, " …") {
		t.Fatalf("note of %d bytes: %.60q…", len(note), note)
	}
	r.Eventf(&corev1.Service{}, nil, corev1.EventTypeNormal, "Ensured", "Ensure", "Ensured %s", "lb-1")
	if got := <-fake.Events; got != "Normal Ensured Ensured lb-1" {
		t.Fatalf("short note changed: %q", got)
	}
}
