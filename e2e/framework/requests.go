package framework

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// HTTPGet does GET url from the host with a short timeout.
func HTTPGet(url string) (int, string, error) {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// CheckGet does GET url with c and wants a 200 whose body starts with
// prefix (a pod name).
func CheckGet(c *http.Client, url, prefix string) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(body), prefix) {
		return fmt.Errorf("status %d body %q", resp.StatusCode, body)
	}
	return nil
}

// UDP sends payload to addr from the host and returns the answer.
func UDP(addr, payload string) (string, error) {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	buf := make([]byte, 1500)
	for range 3 { // UDP may lose the first datagram while ARP resolves
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte(payload)); err != nil {
			return "", err
		}
		n, err := c.Read(buf)
		if err == nil {
			return string(buf[:n]), nil
		}
	}
	return "", errors.New("no UDP reply")
}
