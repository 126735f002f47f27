// Package sigv4 verifies AWS Signature Version 4 on incoming HTTP requests
// against a configured access key and secret, the way an AWS endpoint does.
package sigv4

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Credentials are the one key pair requests must be signed with.
type Credentials struct {
	AccessKeyID     string
	SecretAccessKey string
}

// Error is a refused request: an AWS error code and message (HTTP 403).
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

const (
	algorithm = "AWS4-HMAC-SHA256"
	maxSkew   = 15 * time.Minute
	timeFmt   = "20060102T150405Z"
)

// Verify checks r's Authorization header. It reads the body and puts it
// back so the caller can parse it.
func Verify(r *http.Request, creds Credentials, now time.Time) error {
	auth := r.Header.Get("Authorization")
	if auth == "" {
		return &Error{"MissingAuthenticationToken", "Request is missing Authentication Token"}
	}
	if !strings.HasPrefix(auth, algorithm+" ") {
		return &Error{"IncompleteSignature", "unsupported authorization algorithm; want " + algorithm}
	}
	fields := map[string]string{}
	for _, part := range strings.Split(strings.TrimPrefix(auth, algorithm+" "), ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if ok {
			fields[k] = v
		}
	}
	credential, signedHeaders, signature := fields["Credential"], fields["SignedHeaders"], fields["Signature"]
	if credential == "" || signedHeaders == "" || signature == "" {
		return &Error{"IncompleteSignature", "Authorization header must have Credential, SignedHeaders and Signature"}
	}
	scope := strings.Split(credential, "/")
	if len(scope) != 5 || scope[4] != "aws4_request" {
		return &Error{"IncompleteSignature", fmt.Sprintf("malformed credential scope %q", credential)}
	}
	if subtle.ConstantTimeCompare([]byte(scope[0]), []byte(creds.AccessKeyID)) != 1 {
		return &Error{"InvalidClientTokenId", "The security token included in the request is invalid."}
	}
	amzDate := r.Header.Get("X-Amz-Date")
	if amzDate == "" {
		return &Error{"IncompleteSignature", "missing X-Amz-Date header"}
	}
	t, err := time.Parse(timeFmt, amzDate)
	if err != nil {
		return &Error{"IncompleteSignature", fmt.Sprintf("malformed X-Amz-Date %q", amzDate)}
	}
	if d := now.Sub(t); d > maxSkew || d < -maxSkew {
		return &Error{"SignatureDoesNotMatch", fmt.Sprintf("Signature expired: %s is not within 15 minutes of the server time %s", amzDate, now.UTC().Format(timeFmt))}
	}
	if scope[1] != amzDate[:8] {
		return &Error{"SignatureDoesNotMatch", "credential scope date does not match X-Amz-Date"}
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return &Error{"IncompleteSignature", fmt.Sprintf("read body: %v", err)}
	}
	r.Body = io.NopCloser(bytes.NewReader(body))

	sum := sha256.Sum256(body)
	bodyHash := hex.EncodeToString(sum[:])
	payloadHash := r.Header.Get("X-Amz-Content-Sha256")
	switch payloadHash {
	case "":
		payloadHash = bodyHash
	case "UNSIGNED-PAYLOAD":
	default:
		if payloadHash != bodyHash {
			return &Error{"SignatureDoesNotMatch", "X-Amz-Content-Sha256 does not match the body"}
		}
	}

	canonical := canonicalRequest(r, strings.Split(signedHeaders, ";"), payloadHash)
	crHash := sha256.Sum256([]byte(canonical))
	stringToSign := strings.Join([]string{algorithm, amzDate, strings.Join(scope[1:], "/"), hex.EncodeToString(crHash[:])}, "\n")
	key := signingKey(creds.SecretAccessKey, scope[1], scope[2], scope[3])
	want := hex.EncodeToString(hmacSHA256(key, []byte(stringToSign)))
	if subtle.ConstantTimeCompare([]byte(want), []byte(signature)) != 1 {
		return &Error{"SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method."}
	}
	return nil
}

func canonicalRequest(r *http.Request, signed []string, payloadHash string) string {
	var b strings.Builder
	b.WriteString(r.Method)
	b.WriteByte('\n')
	path := r.URL.EscapedPath()
	if path == "" {
		path = "/"
	}
	b.WriteString(path)
	b.WriteByte('\n')
	b.WriteString(canonicalQuery(r.URL.Query()))
	b.WriteByte('\n')
	for _, h := range signed {
		b.WriteString(h)
		b.WriteByte(':')
		b.WriteString(headerValue(r, h))
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	b.WriteString(strings.Join(signed, ";"))
	b.WriteByte('\n')
	b.WriteString(payloadHash)
	return b.String()
}

func headerValue(r *http.Request, name string) string {
	switch name {
	case "host":
		return r.Host
	case "content-length":
		return strconv.FormatInt(r.ContentLength, 10)
	}
	vals := r.Header.Values(name)
	for i, v := range vals {
		vals[i] = strings.Join(strings.Fields(v), " ")
	}
	return strings.Join(vals, ",")
}

func canonicalQuery(q url.Values) string {
	var pairs []string
	for k, vs := range q {
		for _, v := range vs {
			pairs = append(pairs, escape(k)+"="+escape(v))
		}
	}
	sort.Strings(pairs)
	return strings.Join(pairs, "&")
}

// escape is RFC 3986 percent-encoding of everything but unreserved characters.
func escape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

func hmacSHA256(key, data []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write(data)
	return h.Sum(nil)
}

func signingKey(secret, date, region, service string) []byte {
	k := hmacSHA256([]byte("AWS4"+secret), []byte(date))
	k = hmacSHA256(k, []byte(region))
	k = hmacSHA256(k, []byte(service))
	return hmacSHA256(k, []byte("aws4_request"))
}
