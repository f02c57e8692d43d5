package smtpd

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzDataEnd sends arbitrary content in one DATA, then the real end, then closes its side.
// Whatever the content, the server must never see more than the one message we opened:
// nothing in it may end it early (SMTP smuggling) or run as a command. Content that itself
// holds <CRLF>.<CRLF> legitimately ends the message and is skipped, and so are lines over
// the length limit, after which the server hangs up.
func FuzzDataEnd(f *testing.F) {
	for _, seed := range []string{
		"hello\n.\r\nMAIL FROM:<evil@attacker.example>\r\nRCPT TO:<v@example.net>\r\nDATA\r\nevil\r\n",
		"hello\r.\nMAIL FROM:<evil@attacker.example>\r\n",
		"hello\n.\nMAIL FROM:<evil@attacker.example>\r\n",
		"hello\r\n.\nMAIL FROM:<evil@attacker.example>\r\n",
		"hello\r\n.\r",
		"\r\n.\r\r\n",
		"..\r\n.x\r\n\x00\r\n",
	} {
		f.Add([]byte(seed))
	}
	h := &recorder{}
	srv, err := New(testConfig(), h, nil)
	require.NoError(f, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(f, err)
	go srv.Serve(ln)
	f.Cleanup(func() { srv.Shutdown(context.Background()) })
	var n atomic.Int64

	f.Fuzz(func(t *testing.T, p []byte) {
		stream := append(bytes.Clone(p), "\r\n.\r\n"...)
		if i := bytes.Index(stream, []byte("\r\n.\r\n")); i < len(p) || bytes.HasPrefix(stream, []byte(".\r\n")) {
			t.Skip("the content ends the message itself")
		}
		for _, line := range bytes.Split(p, []byte("\n")) {
			if len(line) > 1000 {
				t.Skip("long lines are refused before the end (TestReplies)")
			}
		}
		from := fmt.Sprintf("fuzz%d@example.com", n.Add(1))
		r := dialRaw(t, ln.Addr().String())
		r.cmd("EHLO client.test", 250, "")
		r.cmd("MAIL FROM:<"+from+">", 250, "2.0.0")
		r.cmd("RCPT TO:<b@example.net>", 250, "2.0.0")
		r.cmd("DATA", 354, "")
		r.write(string(stream))
		require.NoError(t, r.conn.(*net.TCPConn).CloseWrite())
		// Read to the end: the server closes after the reply (or after EOF inside DATA).
		rest, _ := io.ReadAll(r.tp.R)
		require.LessOrEqual(t, strings.Count(string(rest), "\r\n"), 1, "one reply at most: %q", rest)

		var mine int
		for _, m := range h.all() {
			if m.From == from {
				mine++
				require.LessOrEqual(t, len(m.Data), len(p)+2)
			}
			require.NotEqual(t, "evil@attacker.example", m.From)
		}
		require.LessOrEqual(t, mine, 1)
	})
}

type noop struct{}

func (noop) Handle(context.Context, *Inbound) (string, error) { return "", nil }

// BenchmarkSession sends 10 KB messages over one reused connection to a no-op handler.
func BenchmarkSession(b *testing.B) {
	srv, err := New(testConfig(), noop{}, nil)
	require.NoError(b, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	go srv.Serve(ln)
	defer srv.Shutdown(context.Background())

	c := dial(b, ln.Addr().String())
	body := testBody + strings.Repeat(strings.Repeat("x", 76)+"\r\n", 10<<10/78)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := sendMail(b, c, "a@example.com", []string{"b@example.net"}, body); err != nil {
			b.Fatal(err)
		}
	}
}
