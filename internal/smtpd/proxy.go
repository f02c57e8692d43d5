package smtpd

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"time"

	"github.com/pires/go-proxyproto"
)

// The PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and 2) lets a TCP load
// balancer in smtp.proxy_protocol_from tell us the client's address in a header sent before
// any SMTP. Connections from those balancers must send one; others never get to: their bytes
// go to go-smtp untouched. go-proxyproto parses the header; this file only decides what it
// means for the connection.

// proxyReadBuffer is the read-ahead used to find the header: room for a whole v1 line (107
// bytes), which go-proxyproto requires to arrive in one read, and for a v2 header without
// large TLVs (longer ones are read in several steps).
const proxyReadBuffer = 256

// readProxyHeader reads the PROXY header that opens c, within timeout. When the header names
// a TCP client, that client becomes c's remote address. LOCAL (v2), UNKNOWN (v1) and
// non-TCP families (UDP, unix sockets) leave the balancer's own address, for logs and rate
// limits only: c.noClient makes the session treat such a connection as an unknown client
// (AUTH required), since a balancer in allow_networks would otherwise relay for anyone it
// forwards without an address. Whatever was read past the header (SMTP the client pipelined
// behind it) is kept for conn.Read to serve first.
func (c *conn) readProxyHeader(timeout time.Duration) error {
	c.Conn.SetReadDeadline(time.Now().Add(timeout))
	defer c.Conn.SetReadDeadline(time.Time{})
	br := bufio.NewReaderSize(c.Conn, proxyReadBuffer)
	h, err := proxyproto.Read(br)
	if err != nil {
		return fmt.Errorf("proxy header: %w", err)
	}
	if n := br.Buffered(); n > 0 {
		rest, _ := br.Peek(n) // cannot fail: the bytes are buffered
		c.pending = bytes.Clone(rest)
	}
	if h.Command.IsProxy() {
		if src, _, ok := h.TCPAddrs(); ok {
			ap := src.AddrPort()
			c.remote = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
			c.proxied = true
			return nil
		}
	}
	c.noClient = true
	return nil
}
