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

// FuzzDataEnd sends arbitrary bytes in one DATA, then the real end, then closes its side.
// The server must read exactly what RFC 5321 §4.1.1.4 and §4.5.2 say the bytes mean, which
// unstuff (a plain line-by-line reading, split on CRLF only) computes independently of the
// server's state machine: the message ends at the first line that is a lone "." (a bare
// CR or LF never ends a line), a leading dot is removed from every other line, and every
// other octet arrives unchanged. So no end-of-data look-alike ends the message early
// (SMTP smuggling), nothing after the real end runs as a command, and nothing is lost or
// added (a bare CR before the end, ".\rX"). Lines over the length limit are skipped: the
// server refuses them and hangs up (TestLongLines).
func FuzzDataEnd(f *testing.F) {
	for _, seed := range []string{
		"hello\n.\r\nMAIL FROM:<evil@attacker.example>\r\nRCPT TO:<v@example.net>\r\nDATA\r\nevil\r\n",
		"hello\r.\nMAIL FROM:<evil@attacker.example>\r\n",
		"hello\n.\nMAIL FROM:<evil@attacker.example>\r\n",
		"hello\r\n.\nMAIL FROM:<evil@attacker.example>\r\n",
		"hello\r\n.\r",
		"last\r",
		"\r\n.\r\r\n",
		"\r\n.\rX",
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
		for _, line := range bytes.Split(stream, []byte("\n")) {
			if len(line) > maxLineLength-2 {
				t.Skip("long lines are refused before the end (TestLongLines)")
			}
		}
		want, ended := unstuff(stream)
		require.True(t, ended)
		if len(want) > int(testConfig().SMTP.MaxMessageBytes) {
			t.Skip("over the size limit")
		}
		from := fmt.Sprintf("fuzz%d@example.com", n.Add(1))
		r := dialRaw(t, ln.Addr().String())
		r.cmd("EHLO client.test", 250, "")
		r.cmd("MAIL FROM:<"+from+">", 250, "2.0.0")
		r.cmd("RCPT TO:<b@example.net>", 250, "2.0.0")
		r.cmd("DATA", 354, "")
		r.write(string(stream))
		require.NoError(t, r.conn.(*net.TCPConn).CloseWrite())
		r.expect(250, "2.0.0 Ok: queued as")
		// Whatever followed the real end is read as commands: none may start a transaction.
		rest, _ := io.ReadAll(r.tp.R)
		require.NotContains(t, string(rest), "354", "a smuggled DATA ran: %q", rest)

		var mine []recorded
		for _, m := range h.all() {
			if m.From == from {
				mine = append(mine, m)
			}
			require.NotEqual(t, "evil@attacker.example", m.From)
		}
		require.Len(t, mine, 1)
		require.Equal(t, string(want), string(mine[0].Data), "the message differs from what the client sent")
	})
}

// unstuff reads DATA as RFC 5321 defines it, line by line on CRLF: it returns the content up
// to the end-of-data line and whether there was one.
func unstuff(wire []byte) (content []byte, ended bool) {
	var out []byte
	for len(wire) > 0 {
		i := bytes.Index(wire, []byte("\r\n"))
		if i < 0 {
			return out, false
		}
		line := wire[:i]
		wire = wire[i+2:]
		if string(line) == "." {
			return out, true
		}
		line, _ = bytes.CutPrefix(line, []byte("."))
		out = append(append(out, line...), '\r', '\n')
	}
	return out, false
}

// TestLongLines: lines far over RFC 5321's 1000 octets, as applications send them, arrive
// intact; only a line over maxLineLength is refused. go-smtp applies the same limit to
// command lines.
func TestLongLines(t *testing.T) {
	// HTML without a single line break, as some applications write it.
	html := func(n int) string {
		return strings.Repeat("<p>0123456789abcdef</p>", n/23+1)[:n]
	}
	headers := "From: a@example.com\r\nTo: b@example.net\r\nSubject: long\r\nContent-Type: text/html\r\n\r\n"
	tests := []struct {
		name string
		line string // sent as DATA content (with CRLF) or as a command (when cmd)
		cmd  bool
		code int // reply to the end of data, or to the command
		enh  string
	}{
		{name: "100 KB body line", line: html(100 << 10), code: 250, enh: "2.0.0"},
		{name: "longest body line", line: html(maxLineLength - 2), code: 250, enh: "2.0.0"},
		{name: "body line one octet too long", line: html(maxLineLength - 1), code: 500, enh: "5.6.0"},
		{name: "command at 512 octets", line: "NOOP " + strings.Repeat("x", maxCommandLine-7), cmd: true, code: 250, enh: "2.0.0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.SMTP.MaxMessageBytes = 2 << 20 // so that only the line length can refuse
			f := start(t, cfg)
			r := dialRaw(t, f.addr)
			if tt.cmd {
				r.cmd("EHLO client.test", 250, "")
				r.cmd(tt.line, tt.code, tt.enh)
				if tt.code >= 500 {
					r.closed()
				}
				return
			}
			r.envelope()
			r.cmd("DATA", 354, "")
			body := headers + tt.line + "\r\n"
			r.cmd(body+".", tt.code, tt.enh)
			msgs := f.h.all()
			if tt.code != 250 {
				require.Empty(t, msgs)
				// go-smtp hangs up after the refusal (one more 500 reply before it does).
				r.expect(500, "5.4.0")
				r.closed()
				return
			}
			require.Len(t, msgs, 1)
			require.True(t, bytes.Equal([]byte(body), msgs[0].Data), "message changed in transit (%d octets in, %d out)", len(body), len(msgs[0].Data))
		})
	}
}

func TestBufferPool(t *testing.T) {
	srv, err := New(testConfig(), noop{}, nil)
	require.NoError(t, err)
	// sync.Pool may drop what it is given (always under -race, one time in four), so each
	// side is tried many times: a large buffer must never come back, a small one must at
	// least once, or the first check would prove nothing.
	var smallBack bool
	for range 50 {
		big := srv.getBuf()
		big.Grow(maxPooledBuf + 1)
		srv.putBuf(big)
		got := srv.getBuf()
		require.NotSame(t, big, got, "a buffer of %d octets went back to the pool", big.Cap())
		require.LessOrEqual(t, got.Cap(), maxPooledBuf)

		small := got
		small.Grow(maxPooledBuf / 2)
		srv.putBuf(small)
		if srv.getBuf() == small {
			smallBack = true
		}
	}
	require.True(t, smallBack, "a buffer under the limit never came back from the pool")
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
