package api

import (
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/directlb/directlb/pkg/localcloud/store"
)

// params reads AWS Query protocol parameters (Name.member.N.Field).
type params url.Values

func (p params) str(k string) string { return url.Values(p).Get(k) }

func (p params) int32(k string) (int32, bool, error) {
	v := p.str(k)
	if v == "" {
		return 0, false, nil
	}
	n, err := strconv.ParseInt(v, 10, 32)
	if err != nil {
		return 0, false, validationErr(fmt.Sprintf("%s %q is not an integer", k, v))
	}
	return int32(n), true, nil
}

// members returns the indexes N present under prefix.member.N, sorted.
func (p params) members(prefix string) []int {
	seen := map[int]bool{}
	pre := prefix + ".member."
	for k := range p {
		if !strings.HasPrefix(k, pre) {
			continue
		}
		rest := k[len(pre):]
		num, _, _ := strings.Cut(rest, ".")
		n, err := strconv.Atoi(num)
		if err == nil && n > 0 {
			seen[n] = true
		}
	}
	out := make([]int, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Ints(out)
	return out
}

// list returns prefix.member.1, .2, ... values.
func (p params) list(prefix string) []string {
	var out []string
	for _, n := range p.members(prefix) {
		out = append(out, p.str(fmt.Sprintf("%s.member.%d", prefix, n)))
	}
	return out
}

// tags returns prefix.member.N.Key/Value pairs.
func (p params) tags(prefix string) (map[string]string, error) {
	out := map[string]string{}
	for _, n := range p.members(prefix) {
		k := p.str(fmt.Sprintf("%s.member.%d.Key", prefix, n))
		if k == "" {
			return nil, validationErr("a tag key must not be empty")
		}
		if _, dup := out[k]; dup {
			return nil, apiErr("DuplicateTagKeys", 400, fmt.Sprintf("tag key %q given twice", k))
		}
		out[k] = p.str(fmt.Sprintf("%s.member.%d.Value", prefix, n))
	}
	return out, nil
}

// targets returns prefix.member.N.Id/Port.
func (p params) targets(prefix string) ([]store.Target, error) {
	var out []store.Target
	for _, n := range p.members(prefix) {
		id := p.str(fmt.Sprintf("%s.member.%d.Id", prefix, n))
		port, _, err := p.int32(fmt.Sprintf("%s.member.%d.Port", prefix, n))
		if err != nil {
			return nil, err
		}
		out = append(out, store.Target{IP: id, Port: port})
	}
	return out, nil
}

// forwardTarget returns the target group of DefaultActions: one forward action.
func (p params) forwardTarget() (string, bool, error) {
	ns := p.members("DefaultActions")
	if len(ns) == 0 {
		return "", false, nil
	}
	if len(ns) != 1 {
		return "", false, validationErr("localcloud supports exactly one default action")
	}
	pre := fmt.Sprintf("DefaultActions.member.%d.", ns[0])
	if t := p.str(pre + "Type"); t != "forward" {
		return "", false, validationErr(fmt.Sprintf("action type %q: localcloud supports forward", t))
	}
	if tg := p.str(pre + "TargetGroupArn"); tg != "" {
		return tg, true, nil
	}
	fwd := params{}
	for k, v := range p {
		if strings.HasPrefix(k, pre+"ForwardConfig.") {
			fwd[strings.TrimPrefix(k, pre+"ForwardConfig.")] = v
		}
	}
	tgs := fwd.members("TargetGroups")
	if len(tgs) != 1 {
		return "", false, validationErr("a forward action needs exactly one target group")
	}
	return fwd.str(fmt.Sprintf("TargetGroups.member.%d.TargetGroupArn", tgs[0])), true, nil
}

// attributes returns prefix.member.N.Key/Value.
func (p params) attributes(prefix string) map[string]string {
	out := map[string]string{}
	for _, n := range p.members(prefix) {
		out[p.str(fmt.Sprintf("%s.member.%d.Key", prefix, n))] = p.str(fmt.Sprintf("%s.member.%d.Value", prefix, n))
	}
	return out
}
