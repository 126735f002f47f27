package datapath

// set is a set that stays a slice while small: most Services have a
// handful of backends, and building maps for each made programming 10,000
// Services several times slower.
type set[T comparable] struct {
	items []T
	m     map[T]struct{}
}

const setSliceMax = 16

func newSet[T comparable](capacity int) *set[T] {
	s := &set[T]{}
	if capacity > setSliceMax {
		s.m = make(map[T]struct{}, capacity)
	} else {
		s.items = make([]T, 0, capacity)
	}
	return s
}

func (s *set[T]) has(v T) bool {
	if s.m != nil {
		_, ok := s.m[v]
		return ok
	}
	for _, x := range s.items {
		if x == v {
			return true
		}
	}
	return false
}

// add adds v and reports whether it was new.
func (s *set[T]) add(v T) bool {
	if s.has(v) {
		return false
	}
	if s.m != nil {
		s.m[v] = struct{}{}
		return true
	}
	s.items = append(s.items, v)
	if len(s.items) > setSliceMax {
		s.m = make(map[T]struct{}, 2*len(s.items))
		for _, x := range s.items {
			s.m[x] = struct{}{}
		}
		s.items = nil
	}
	return true
}
