package cloud

// MaxTargetsPerCall is the most targets one ELBv2 RegisterTargets or
// DeregisterTargets request takes. Implementations split longer lists.
const MaxTargetsPerCall = 200

// BatchError is the error of a call an implementation made as several
// requests (InBatches), one of which failed: the first Done targets of the
// list went through before it.
type BatchError struct {
	Done int
	Err  error
}

func (e *BatchError) Error() string { return e.Err.Error() }
func (e *BatchError) Unwrap() error { return e.Err }

// InBatches calls do with consecutive batches of at most n targets, in
// order, and stops at the first error, which it returns as a *BatchError.
func InBatches(targets []Target, n int, do func(batch []Target) error) error {
	for start := 0; start < len(targets); start += n {
		if err := do(targets[start:min(start+n, len(targets))]); err != nil {
			return &BatchError{Done: start, Err: err}
		}
	}
	return nil
}
