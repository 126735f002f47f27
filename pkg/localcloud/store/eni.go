package store

import (
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"path"
	"sort"
	"strconv"
	"strings"
)

// NetworkInterface is an EC2 elastic network interface attached to an
// instance (a test-bed node). ENIs are not created through the EC2 API:
// they are seeded (PutNetworkInterface, from the admin endpoint or the
// seed file), and the API assigns and unassigns their secondary private
// addresses.
type NetworkInterface struct {
	ID string `json:"id"`
	// InstanceID is the instance the ENI is attached to (EC2's
	// attachment.instance-id; the test bed uses the node name).
	InstanceID  string `json:"instanceId"`
	DeviceIndex int32  `json:"deviceIndex"`
	MAC         string `json:"macAddress"`
	// SubnetCIDR is the ENI's subnet; every address of the ENI is in it.
	SubnetCIDR string `json:"subnetCidr"`
	SubnetID   string `json:"subnetId,omitempty"`
	VPCID      string `json:"vpcId,omitempty"`
	// PrivateIP is the primary private address.
	PrivateIP string `json:"privateIpAddress"`
	// Pool is where SecondaryPrivateIpAddressCount takes addresses from
	// (the node's pod range in the test bed); empty: the subnet.
	Pool string `json:"pool,omitempty"`
	// AddressLimit is the most private IPv4 addresses the ENI holds,
	// primary included (EC2's per-instance-type "IPv4 addresses per
	// interface"); 0 on input means the pool's size + 1.
	AddressLimit int               `json:"addressLimit"`
	Description  string            `json:"description,omitempty"`
	Tags         map[string]string `json:"tags,omitempty"`
	// SecondaryIPs are the assigned secondary addresses, in assignment order.
	SecondaryIPs []string `json:"secondaryIps,omitempty"`
}

// EC2 error codes.
const (
	CodeENINotFound         = "InvalidNetworkInterfaceID.NotFound"
	CodeENIMalformed        = "InvalidNetworkInterfaceID.Malformed"
	CodeInvalidParameter    = "InvalidParameterValue"
	CodeAddressLimit        = "PrivateIpAddressLimitExceeded"
	CodeAddressInUse        = "InvalidIPAddress.InUse"
	CodeInsufficientAddress = "InsufficientFreeAddressesInSubnet"
	CodeMissingParameter    = "MissingParameter"
	CodeParamCombination    = "InvalidParameterCombination"
)

func ec2Err(code, msg string) *Error { return errf(code, http.StatusBadRequest, msg) }

// ValidENIID reports whether id looks like an ENI ID (eni-<letters, digits, ->).
func ValidENIID(id string) bool {
	if !strings.HasPrefix(id, "eni-") || len(id) == 4 || len(id) > 64 {
		return false
	}
	for _, c := range id[4:] {
		if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

func checkENIID(id string) error {
	if !ValidENIID(id) {
		return ec2Err(CodeENIMalformed, fmt.Sprintf("Invalid id: %q (expecting \"eni-...\")", id))
	}
	return nil
}

// prefixSize is the number of addresses in p.
func prefixSize(p netip.Prefix) int {
	bits := p.Addr().BitLen() - p.Bits()
	if bits >= 31 {
		return 1 << 30
	}
	return 1 << bits
}

// normalize checks a seeded ENI and fills its defaults.
func (ni *NetworkInterface) normalize() error {
	if err := checkENIID(ni.ID); err != nil {
		return err
	}
	if ni.InstanceID == "" {
		return ec2Err(CodeMissingParameter, "instanceId is required")
	}
	if ni.DeviceIndex < 0 {
		return ec2Err(CodeInvalidParameter, fmt.Sprintf("device index %d must not be negative", ni.DeviceIndex))
	}
	mac, err := net.ParseMAC(ni.MAC)
	if err != nil || len(mac) != 6 {
		return ec2Err(CodeInvalidParameter, fmt.Sprintf("macAddress %q is not an Ethernet address", ni.MAC))
	}
	ni.MAC = mac.String()
	subnet, err := netip.ParsePrefix(ni.SubnetCIDR)
	if err != nil || !subnet.Addr().Is4() {
		return ec2Err(CodeInvalidParameter, fmt.Sprintf("subnetCidr %q is not an IPv4 prefix", ni.SubnetCIDR))
	}
	subnet = subnet.Masked()
	ni.SubnetCIDR = subnet.String()
	ip, err := netip.ParseAddr(ni.PrivateIP)
	if err != nil || !subnet.Contains(ip) {
		return ec2Err(CodeInvalidParameter, fmt.Sprintf("privateIpAddress %q is not in subnet %s", ni.PrivateIP, subnet))
	}
	pool := subnet
	if ni.Pool != "" {
		pool, err = netip.ParsePrefix(ni.Pool)
		if err != nil || !pool.Addr().Is4() || !subnet.Contains(pool.Addr()) || pool.Bits() < subnet.Bits() {
			return ec2Err(CodeInvalidParameter, fmt.Sprintf("pool %q is not a prefix inside subnet %s", ni.Pool, subnet))
		}
		pool = pool.Masked()
		ni.Pool = pool.String()
	}
	if ni.AddressLimit == 0 {
		ni.AddressLimit = prefixSize(pool) + 1
	}
	if ni.AddressLimit < 1 {
		return ec2Err(CodeInvalidParameter, fmt.Sprintf("addressLimit %d must be at least 1", ni.AddressLimit))
	}
	if ni.SubnetID == "" {
		ni.SubnetID = "subnet-localcloud"
	}
	if ni.VPCID == "" {
		ni.VPCID = "vpc-localcloud"
	}
	return nil
}

func (s *Store) enis() map[string]*NetworkInterface {
	if s.st.NetworkInterfaces == nil {
		s.st.NetworkInterfaces = map[string]*NetworkInterface{}
	}
	return s.st.NetworkInterfaces
}

func cloneENI(ni *NetworkInterface) NetworkInterface {
	out := *ni
	out.Tags = copyTags(ni.Tags)
	out.SecondaryIPs = append([]string(nil), ni.SecondaryIPs...)
	return out
}

// owner returns the ENI that holds ip (primary or secondary), or nil.
func (s *Store) owner(ip string) *NetworkInterface {
	for _, ni := range s.enis() {
		if ni.PrivateIP == ip {
			return ni
		}
		for _, a := range ni.SecondaryIPs {
			if a == ip {
				return ni
			}
		}
	}
	return nil
}

// PutNetworkInterface creates the ENI or replaces its description (MAC,
// instance, addresses, limit, tags); an existing ENI keeps its secondary
// addresses. The primary address must not belong to another ENI.
func (s *Store) PutNetworkInterface(ni NetworkInterface) (NetworkInterface, error) {
	if err := ni.normalize(); err != nil {
		return NetworkInterface{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if o := s.owner(ni.PrivateIP); o != nil && o.ID != ni.ID {
		return NetworkInterface{}, ec2Err(CodeAddressInUse, fmt.Sprintf("Address %s is in use by %s", ni.PrivateIP, o.ID))
	}
	ni.Tags = copyTags(ni.Tags)
	ni.SecondaryIPs = nil
	if old, ok := s.enis()[ni.ID]; ok {
		ni.SecondaryIPs = old.SecondaryIPs
	}
	stored := ni
	s.enis()[ni.ID] = &stored
	return cloneENI(&stored), s.commit()
}

// DeleteNetworkInterface removes a seeded ENI; an unknown one is not found.
func (s *Store) DeleteNetworkInterface(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.enis()[id]; !ok {
		return ec2Err(CodeENINotFound, fmt.Sprintf("The networkInterface ID '%s' does not exist", id))
	}
	delete(s.enis(), id)
	return s.commit()
}

// Filter is an EC2 filter: Name and the values any of which may match
// (with * and ? wildcards).
type Filter struct {
	Name   string
	Values []string
}

// eniFilterValues returns the values of the ENI that filter name matches
// against; ok is false for a filter localcloud does not know.
func eniFilterValues(ni *NetworkInterface, name string) ([]string, bool) {
	switch name {
	case "network-interface-id":
		return []string{ni.ID}, true
	case "attachment.instance-id":
		return []string{ni.InstanceID}, true
	case "attachment.device-index":
		return []string{strconv.Itoa(int(ni.DeviceIndex))}, true
	case "attachment.status":
		return []string{"attached"}, true
	case "status":
		return []string{"in-use"}, true
	case "mac-address":
		return []string{ni.MAC}, true
	case "subnet-id":
		return []string{ni.SubnetID}, true
	case "vpc-id":
		return []string{ni.VPCID}, true
	case "description":
		return []string{ni.Description}, true
	case "private-ip-address", "addresses.private-ip-address":
		return append([]string{ni.PrivateIP}, ni.SecondaryIPs...), true
	case "addresses.primary":
		return []string{"true", "false"}, true
	case "tag-key":
		keys := make([]string, 0, len(ni.Tags))
		for k := range ni.Tags {
			keys = append(keys, k)
		}
		return keys, true
	}
	if key, ok := strings.CutPrefix(name, "tag:"); ok {
		if v, has := ni.Tags[key]; has {
			return []string{v}, true
		}
		return nil, true
	}
	return nil, false
}

func matchAny(patterns, values []string) bool {
	for _, p := range patterns {
		for _, v := range values {
			if p == v {
				return true
			}
			if strings.ContainsAny(p, "*?") {
				if ok, _ := path.Match(p, v); ok {
					return true
				}
			}
		}
	}
	return false
}

// DescribeNetworkInterfaces returns the ENIs with the given IDs (all when
// none) that pass every filter, sorted by ID. An unknown ID is
// InvalidNetworkInterfaceID.NotFound; an unknown filter InvalidParameterValue.
func (s *Store) DescribeNetworkInterfaces(ids []string, filters []Filter) ([]NetworkInterface, error) {
	for _, id := range ids {
		if err := checkENIID(id); err != nil {
			return nil, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range filters {
		if _, ok := eniFilterValues(&NetworkInterface{}, f.Name); !ok {
			return nil, ec2Err(CodeInvalidParameter, fmt.Sprintf("The filter '%s' is invalid", f.Name))
		}
	}
	var cands []*NetworkInterface
	if len(ids) == 0 {
		for _, ni := range s.enis() {
			cands = append(cands, ni)
		}
	} else {
		var missing []string
		seen := map[string]bool{}
		for _, id := range ids {
			ni, ok := s.enis()[id]
			if !ok {
				missing = append(missing, id)
				continue
			}
			if !seen[id] {
				seen[id] = true
				cands = append(cands, ni)
			}
		}
		if len(missing) > 0 {
			return nil, ec2Err(CodeENINotFound, fmt.Sprintf("The networkInterface ID '%s' does not exist", strings.Join(missing, ", ")))
		}
	}
	var out []NetworkInterface
next:
	for _, ni := range cands {
		for _, f := range filters {
			vals, _ := eniFilterValues(ni, f.Name)
			if !matchAny(f.Values, vals) {
				continue next
			}
		}
		out = append(out, cloneENI(ni))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// reserved reports whether a is one of the addresses EC2 keeps for itself
// in a subnet: the network address, the next three and the broadcast.
func reserved(subnet netip.Prefix, a netip.Addr) bool {
	base := subnet.Masked().Addr()
	for i := 0; i < 4; i++ {
		if a == base {
			return true
		}
		base = base.Next()
	}
	last := new(big.Int).SetBytes(subnet.Masked().Addr().AsSlice())
	last.Add(last, big.NewInt(int64(prefixSize(subnet)-1)))
	b := last.FillBytes(make([]byte, 4))
	return a == netip.AddrFrom4([4]byte(b))
}

// AssignPrivateIPs assigns secondary addresses to the ENI: the listed
// ones, or count free ones from its pool (lowest first), never both.
// Addresses already on this ENI are kept as they are; an address on
// another ENI is InvalidIPAddress.InUse unless allowReassignment moves it.
// Going over the ENI's limit is PrivateIpAddressLimitExceeded. It returns
// the addresses assigned by this call.
func (s *Store) AssignPrivateIPs(id string, ips []string, count int, allowReassignment bool) ([]string, error) {
	if err := checkENIID(id); err != nil {
		return nil, err
	}
	switch {
	case len(ips) > 0 && count > 0:
		return nil, ec2Err(CodeParamCombination, "Specify either PrivateIpAddress or SecondaryPrivateIpAddressCount, not both")
	case len(ips) == 0 && count == 0:
		return nil, ec2Err(CodeMissingParameter, "Either PrivateIpAddress or SecondaryPrivateIpAddressCount is required")
	case count < 0:
		return nil, ec2Err(CodeInvalidParameter, fmt.Sprintf("SecondaryPrivateIpAddressCount %d must be positive", count))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ni, ok := s.enis()[id]
	if !ok {
		return nil, ec2Err(CodeENINotFound, fmt.Sprintf("The networkInterface ID '%s' does not exist", id))
	}
	subnet := netip.MustParsePrefix(ni.SubnetCIDR)
	var add []string
	var moves []reassignment
	var err error
	if len(ips) > 0 {
		add, moves, err = s.listedIPs(ni, subnet, ips, allowReassignment)
	} else {
		add, err = s.freeIPs(ni, subnet, count)
	}
	if err != nil {
		return nil, err
	}
	if 1+len(ni.SecondaryIPs)+len(add) > ni.AddressLimit {
		return nil, limitErr(ni, len(add))
	}
	if len(add) == 0 {
		return []string{}, nil
	}
	for _, m := range moves {
		m.from.SecondaryIPs = removeAll(m.from.SecondaryIPs, map[string]bool{m.ip: true})
	}
	ni.SecondaryIPs = append(ni.SecondaryIPs, add...)
	return add, s.commit()
}

// reassignment is an address AssignPrivateIPs moves from another ENI.
type reassignment struct {
	from *NetworkInterface
	ip   string
}

// listedIPs checks the addresses AssignPrivateIPs was given for ni and
// returns those to add (not on ni yet, each once) and those among them to
// take from another ENI (allowReassignment).
func (s *Store) listedIPs(ni *NetworkInterface, subnet netip.Prefix, ips []string, allowReassignment bool) ([]string, []reassignment, error) {
	var add []string
	var moves []reassignment
	seen := map[string]bool{}
	for _, raw := range ips {
		a, err := netip.ParseAddr(raw)
		if err != nil || !a.Is4() {
			return nil, nil, ec2Err(CodeInvalidParameter, fmt.Sprintf("Invalid IPv4 address %q", raw))
		}
		ip := a.String()
		if !subnet.Contains(a) || reserved(subnet, a) {
			return nil, nil, ec2Err(CodeInvalidParameter, fmt.Sprintf("Address %s does not fall within the subnet's address range %s", ip, subnet))
		}
		if seen[ip] {
			continue
		}
		seen[ip] = true
		o := s.owner(ip)
		switch {
		case o == ni:
			continue
		case o != nil && (o.PrivateIP == ip || !allowReassignment):
			return nil, nil, ec2Err(CodeAddressInUse, fmt.Sprintf("Address %s is in use.", ip))
		case o != nil:
			moves = append(moves, reassignment{o, ip})
		}
		add = append(add, ip)
	}
	return add, moves, nil
}

// freeIPs picks count free addresses for ni from its pool (the subnet
// when it has none), lowest first.
func (s *Store) freeIPs(ni *NetworkInterface, subnet netip.Prefix, count int) ([]string, error) {
	pool := subnet
	if ni.Pool != "" {
		pool = netip.MustParsePrefix(ni.Pool)
	}
	if 1+len(ni.SecondaryIPs)+count > ni.AddressLimit {
		return nil, limitErr(ni, count)
	}
	var add []string
	for a := pool.Masked().Addr(); pool.Contains(a) && len(add) < count; a = a.Next() {
		if reserved(subnet, a) || s.owner(a.String()) != nil {
			continue
		}
		add = append(add, a.String())
	}
	if len(add) < count {
		return nil, ec2Err(CodeInsufficientAddress, fmt.Sprintf("%s has %d free addresses for %s, %d were asked for", pool, len(add), ni.ID, count))
	}
	return add, nil
}

func limitErr(ni *NetworkInterface, n int) *Error {
	return ec2Err(CodeAddressLimit, fmt.Sprintf("Number of private addresses will exceed limit: %s holds %d of %d, %d more were asked for",
		ni.ID, 1+len(ni.SecondaryIPs), ni.AddressLimit, n))
}

func removeAll(list []string, drop map[string]bool) []string {
	out := list[:0]
	for _, a := range list {
		if !drop[a] {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// UnassignPrivateIPs removes secondary addresses from the ENI. All of them
// must be secondary addresses of this ENI (InvalidParameterValue otherwise,
// and nothing changes).
func (s *Store) UnassignPrivateIPs(id string, ips []string) error {
	if err := checkENIID(id); err != nil {
		return err
	}
	if len(ips) == 0 {
		return ec2Err(CodeMissingParameter, "The request must contain the parameter PrivateIpAddress")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ni, ok := s.enis()[id]
	if !ok {
		return ec2Err(CodeENINotFound, fmt.Sprintf("The networkInterface ID '%s' does not exist", id))
	}
	held := map[string]bool{}
	for _, a := range ni.SecondaryIPs {
		held[a] = true
	}
	drop := map[string]bool{}
	for _, raw := range ips {
		a, err := netip.ParseAddr(raw)
		if err != nil || !a.Is4() {
			return ec2Err(CodeInvalidParameter, fmt.Sprintf("Invalid IPv4 address %q", raw))
		}
		ip := a.String()
		if ip == ni.PrivateIP {
			return ec2Err(CodeInvalidParameter, fmt.Sprintf("The primary address %s of %s cannot be unassigned", ip, id))
		}
		if !held[ip] {
			return ec2Err(CodeInvalidParameter, fmt.Sprintf("Some of the specified addresses are not assigned to interface %s", id))
		}
		drop[ip] = true
	}
	ni.SecondaryIPs = removeAll(ni.SecondaryIPs, drop)
	return s.commit()
}
