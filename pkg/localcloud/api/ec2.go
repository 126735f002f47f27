package api

import (
	"bytes"
	"context"
	"encoding/xml"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"github.com/directlb/directlb/pkg/localcloud/store"
)

// EC2 is served on the same endpoint as ELBv2 with the EC2 query protocol:
// Action=...&Version=2016-11-15, flat lists (Name.N), results in
// <ActionResponse xmlns=EC2Namespace><requestId/>…, errors in
// <Response><Errors><Error>…</Errors><RequestID/></Response>.

// EC2Namespace is the EC2 API's XML namespace.
const EC2Namespace = "http://ec2.amazonaws.com/doc/2016-11-15/"

// EC2Version is the EC2 API version localcloud speaks.
const EC2Version = "2016-11-15"

func (h *Handler) ec2Actions() map[string]action {
	return map[string]action{
		"DescribeNetworkInterfaces":  h.describeNetworkInterfaces,
		"AssignPrivateIpAddresses":   h.assignPrivateIPAddresses,
		"UnassignPrivateIpAddresses": h.unassignPrivateIPAddresses,
	}
}

func ec2Err(code, msg string) *apiError { return apiErr(code, http.StatusBadRequest, msg) }

// flat returns prefix.1, prefix.2, ... values (EC2 flat lists).
func (p params) flat(prefix string) []string {
	var ns []int
	for k := range p {
		rest, ok := strings.CutPrefix(k, prefix+".")
		if !ok || strings.Contains(rest, ".") {
			continue
		}
		if n, err := strconv.Atoi(rest); err == nil && n > 0 {
			ns = append(ns, n)
		}
	}
	sort.Ints(ns)
	out := make([]string, 0, len(ns))
	for _, n := range ns {
		out = append(out, p.str(fmt.Sprintf("%s.%d", prefix, n)))
	}
	return out
}

// filters returns Filter.N.Name with its Filter.N.Value.M.
func (p params) filters() ([]store.Filter, error) {
	seen := map[int]bool{}
	for k := range p {
		rest, ok := strings.CutPrefix(k, "Filter.")
		if !ok {
			continue
		}
		num, _, _ := strings.Cut(rest, ".")
		if n, err := strconv.Atoi(num); err == nil && n > 0 {
			seen[n] = true
		}
	}
	ns := make([]int, 0, len(seen))
	for n := range seen {
		ns = append(ns, n)
	}
	sort.Ints(ns)
	var out []store.Filter
	for _, n := range ns {
		name := p.str(fmt.Sprintf("Filter.%d.Name", n))
		if name == "" {
			return nil, ec2Err("InvalidParameterValue", fmt.Sprintf("Filter.%d.Name is required", n))
		}
		out = append(out, store.Filter{Name: name, Values: p.flat(fmt.Sprintf("Filter.%d.Value", n))})
	}
	return out, nil
}

func (p params) ec2Int(k string) (int, bool, error) {
	v := p.str(k)
	if v == "" {
		return 0, false, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, false, ec2Err("InvalidParameterValue", fmt.Sprintf("Value (%s) for parameter %s is invalid. Expected an integer.", v, k))
	}
	return n, true, nil
}

func (p params) ec2Bool(k string) (bool, error) {
	switch v := p.str(k); v {
	case "":
		return false, nil
	case "true", "false":
		return v == "true", nil
	default:
		return false, ec2Err("InvalidParameterValue", fmt.Sprintf("Value (%s) for parameter %s is invalid. Expected a boolean.", v, k))
	}
}

// ---- XML ----

type items[T any] struct {
	Item []T `xml:"item"`
}

func itemSet[T any](v []T) *items[T] { return &items[T]{Item: v} }

type xENITag struct {
	Key   string `xml:"key"`
	Value string `xml:"value"`
}

type xENIAttachment struct {
	AttachmentID        string `xml:"attachmentId"`
	InstanceID          string `xml:"instanceId"`
	InstanceOwnerID     string `xml:"instanceOwnerId"`
	DeviceIndex         int32  `xml:"deviceIndex"`
	NetworkCardIndex    int32  `xml:"networkCardIndex"`
	Status              string `xml:"status"`
	DeleteOnTermination bool   `xml:"deleteOnTermination"`
}

type xPrivateIP struct {
	PrivateIPAddress string `xml:"privateIpAddress"`
	Primary          bool   `xml:"primary"`
}

type xNetworkInterface struct {
	NetworkInterfaceID    string             `xml:"networkInterfaceId"`
	SubnetID              string             `xml:"subnetId"`
	VpcID                 string             `xml:"vpcId"`
	AvailabilityZone      string             `xml:"availabilityZone"`
	Description           string             `xml:"description"`
	OwnerID               string             `xml:"ownerId"`
	RequesterManaged      bool               `xml:"requesterManaged"`
	Status                string             `xml:"status"`
	MacAddress            string             `xml:"macAddress"`
	PrivateIPAddress      string             `xml:"privateIpAddress"`
	SourceDestCheck       bool               `xml:"sourceDestCheck"`
	GroupSet              *items[struct{}]   `xml:"groupSet"`
	Attachment            xENIAttachment     `xml:"attachment"`
	TagSet                *items[xENITag]    `xml:"tagSet"`
	PrivateIPAddressesSet *items[xPrivateIP] `xml:"privateIpAddressesSet"`
	InterfaceType         string             `xml:"interfaceType"`
}

func toXENI(ni store.NetworkInterface) xNetworkInterface {
	ips := []xPrivateIP{{PrivateIPAddress: ni.PrivateIP, Primary: true}}
	for _, a := range ni.SecondaryIPs {
		ips = append(ips, xPrivateIP{PrivateIPAddress: a})
	}
	var tags []xENITag
	for _, t := range toXTags(ni.Tags).Member {
		tags = append(tags, xENITag(t))
	}
	return xNetworkInterface{
		NetworkInterfaceID: ni.ID,
		SubnetID:           ni.SubnetID,
		VpcID:              ni.VPCID,
		AvailabilityZone:   zone,
		Description:        ni.Description,
		OwnerID:            "000000000000",
		Status:             "in-use",
		MacAddress:         ni.MAC,
		PrivateIPAddress:   ni.PrivateIP,
		SourceDestCheck:    true,
		GroupSet:           itemSet[struct{}](nil),
		Attachment: xENIAttachment{
			AttachmentID:        "eni-attach-" + strings.TrimPrefix(ni.ID, "eni-"),
			InstanceID:          ni.InstanceID,
			InstanceOwnerID:     "000000000000",
			DeviceIndex:         ni.DeviceIndex,
			Status:              "attached",
			DeleteOnTermination: ni.DeviceIndex == 0,
		},
		TagSet:                itemSet(tags),
		PrivateIPAddressesSet: itemSet(ips),
		InterfaceType:         "interface",
	}
}

type describeNetworkInterfacesResult struct {
	NetworkInterfaceSet *items[xNetworkInterface] `xml:"networkInterfaceSet"`
	NextToken           string                    `xml:"nextToken,omitempty"`
}

type xAssignedIP struct {
	PrivateIPAddress string `xml:"privateIpAddress"`
}

type assignPrivateIPAddressesResult struct {
	NetworkInterfaceID            string              `xml:"networkInterfaceId"`
	AssignedPrivateIPAddressesSet *items[xAssignedIP] `xml:"assignedPrivateIpAddressesSet"`
	AssignedIpv4PrefixSet         *items[struct{}]    `xml:"assignedIpv4PrefixSet"`
}

type returnResult struct {
	Return bool `xml:"return"`
}

type xEC2Error struct {
	XMLName   struct{}        `xml:"Response"`
	Errors    []xEC2ErrorItem `xml:"Errors>Error"`
	RequestID string          `xml:"RequestID"`
}

type xEC2ErrorItem struct {
	Code    string `xml:"Code"`
	Message string `xml:"Message"`
}

func writeEC2Error(w http.ResponseWriter, e *apiError, reqID string) {
	body, _ := xml.Marshal(xEC2Error{Errors: []xEC2ErrorItem{{Code: e.Code, Message: e.Message}}, RequestID: reqID})
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.Header().Set("X-Amzn-Requestid", reqID)
	w.WriteHeader(e.Status)
	_, _ = w.Write([]byte(xml.Header))
	_, _ = w.Write(body)
}

// writeEC2Result writes <ActionResponse xmlns=…><requestId/>fields of result…</ActionResponse>.
func writeEC2Result(w http.ResponseWriter, action string, result any, reqID string) {
	var buf bytes.Buffer
	buf.WriteString(xml.Header)
	fmt.Fprintf(&buf, "<%sResponse xmlns=%q><requestId>%s</requestId>", action, EC2Namespace, reqID)
	var inner bytes.Buffer
	if err := xml.NewEncoder(&inner).EncodeElement(result, xml.StartElement{Name: xml.Name{Local: "x"}}); err != nil {
		writeEC2Error(w, &apiError{Code: "InternalError", Message: err.Error(), Status: 500}, reqID)
		return
	}
	// Drop the wrapper element: EC2 puts the fields right under the response.
	b := inner.Bytes()
	b = bytes.TrimPrefix(b, []byte("<x>"))
	b = bytes.TrimSuffix(b, []byte("</x>"))
	buf.Write(b)
	fmt.Fprintf(&buf, "</%sResponse>", action)
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.Header().Set("X-Amzn-Requestid", reqID)
	_, _ = w.Write(buf.Bytes())
}

// ---- actions ----

func (h *Handler) describeNetworkInterfaces(_ context.Context, p params) (any, error) {
	ids := p.flat("NetworkInterfaceId")
	filters, err := p.filters()
	if err != nil {
		return nil, err
	}
	max, hasMax, err := p.ec2Int("MaxResults")
	if err != nil {
		return nil, err
	}
	if hasMax && len(ids) > 0 {
		return nil, ec2Err("InvalidParameterCombination", "The parameter NetworkInterfaceIds cannot be used with the parameter MaxResults")
	}
	if hasMax && (max < 5 || max > 1000) {
		return nil, ec2Err("InvalidParameterValue", fmt.Sprintf("Value ( %d ) for parameter maxResults is invalid. Expecting a value between 5 and 1000.", max))
	}
	if !hasMax {
		max = 1000
	}
	enis, err := h.cfg.Store.DescribeNetworkInterfaces(ids, filters)
	if err != nil {
		return nil, err
	}
	pg, next, err := page(enis, func(n store.NetworkInterface) string { return n.ID }, p.str("NextToken"), max)
	if err != nil {
		return nil, ec2Err("InvalidNextToken", fmt.Sprintf("The token '%s' is invalid", p.str("NextToken")))
	}
	out := make([]xNetworkInterface, 0, len(pg))
	for _, ni := range pg {
		out = append(out, toXENI(ni))
	}
	return describeNetworkInterfacesResult{NetworkInterfaceSet: itemSet(out), NextToken: next}, nil
}

func (h *Handler) assignPrivateIPAddresses(_ context.Context, p params) (any, error) {
	id := p.str("NetworkInterfaceId")
	if id == "" {
		return nil, ec2Err("MissingParameter", "The request must contain the parameter NetworkInterfaceId")
	}
	count, _, err := p.ec2Int("SecondaryPrivateIpAddressCount")
	if err != nil {
		return nil, err
	}
	reassign, err := p.ec2Bool("AllowReassignment")
	if err != nil {
		return nil, err
	}
	if len(p.flat("Ipv4Prefix")) > 0 || p.str("Ipv4PrefixCount") != "" {
		return nil, ec2Err("InvalidParameterValue", "localcloud does not assign IPv4 prefixes")
	}
	added, err := h.cfg.Store.AssignPrivateIPs(id, p.flat("PrivateIpAddress"), count, reassign)
	if err != nil {
		return nil, err
	}
	set := make([]xAssignedIP, 0, len(added))
	for _, a := range added {
		set = append(set, xAssignedIP{PrivateIPAddress: a})
	}
	return assignPrivateIPAddressesResult{
		NetworkInterfaceID:            id,
		AssignedPrivateIPAddressesSet: itemSet(set),
		AssignedIpv4PrefixSet:         itemSet[struct{}](nil),
	}, nil
}

func (h *Handler) unassignPrivateIPAddresses(_ context.Context, p params) (any, error) {
	id := p.str("NetworkInterfaceId")
	if id == "" {
		return nil, ec2Err("MissingParameter", "The request must contain the parameter NetworkInterfaceId")
	}
	if len(p.flat("Ipv4Prefix")) > 0 {
		return nil, ec2Err("InvalidParameterValue", "localcloud does not assign IPv4 prefixes")
	}
	if err := h.cfg.Store.UnassignPrivateIPs(id, p.flat("PrivateIpAddress")); err != nil {
		return nil, err
	}
	return returnResult{Return: true}, nil
}
