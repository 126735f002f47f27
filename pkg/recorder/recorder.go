// Package recorder wraps Kubernetes event recorders so that an event's note
// always fits what the apiserver accepts, instead of the event being refused
// and lost (an invalid annotation with a long value produced no event at
// all); Truncate is the cut it uses, also for condition messages.
package recorder

import (
	"fmt"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/events"
)

// MaxNote is the apiserver's limit on an events.k8s.io/v1 Event's note.
const MaxNote = 1024

// MaxConditionMessage is the apiserver's limit on a condition's message.
const MaxConditionMessage = 32768

// New returns r with every note cut to MaxNote bytes.
func New(r events.EventRecorder) events.EventRecorder { return truncating{r} }

type truncating struct{ events.EventRecorder }

func (t truncating) Eventf(regarding, related runtime.Object, eventtype, reason, action, note string, args ...any) {
	t.EventRecorder.Eventf(regarding, related, eventtype, reason, action, "%s", Truncate(fmt.Sprintf(note, args...), MaxNote))
}

// more marks a cut text.
const more = " …"

// Truncate returns s cut to at most n bytes on a UTF-8 boundary, ending in
// " …" when it was cut.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := max(n-len(more), 0)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + more
}
