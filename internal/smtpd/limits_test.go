package smtpd

import (
	"log/slog"
	"net"
	"net/netip"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"relay/internal/config"
)

// TestDataEndAfterBareCR: a message whose last line ends in a bare CR is still ended by
// the <CRLF>.<CRLF> that follows (go-smtp v0.25.1 waited for the timeout and answered 451).
func TestDataEndAfterBareCR(t *testing.T) {
	cfg := testConfig()
	cfg.SMTP.Timeout = config.Duration{Duration: 20 * time.Second}
	f := start(t, cfg)
	r := dialRaw(t, f.addr)
	r.conn.SetDeadline(time.Now().Add(5 * time.Second)) // far below the server's timeout
	r.envelope()
	r.cmd("DATA", 354, "")
	r.write("Subject: cr\r\n\r\nlast\r\r\n.\r\n")
	r.expect(250, "2.0.0 Ok: queued as")
	r.cmd("QUIT", 221, "")
	msgs := f.h.all()
	require.Len(t, msgs, 1)
	require.Equal(t, "Subject: cr\r\n\r\nlast\r\r\n", string(msgs[0].Data))
}

func TestCommandAndPathLimits(t *testing.T) {
	var logs syncBuffer
	f := start(t, testConfig(), func(s *Server) { s.log = slog.New(slog.NewTextHandler(&logs, nil)) })
	r := dialRaw(t, f.addr)
	r.cmd("EHLO client.test", 250, "")

	long := strings.Repeat("a", 100<<10)
	// A 100 KB MAIL FROM is one command line far over 512 octets: refused, not parsed,
	// and the connection stays usable.
	r.cmd("MAIL FROM:<"+long+"@example.com>", 500, "5.5.2 Line too long")
	r.cmd("NOOP "+strings.Repeat("x", maxCommandLine-7), 250, "2.0.0") // 512 with its CRLF
	r.cmd("NOOP "+strings.Repeat("x", maxCommandLine-6), 500, "5.5.2")

	// Paths within the line limit but over RFC 5321's own limits.
	local64 := strings.Repeat("l", 64)
	r.cmd("MAIL FROM:<"+local64+"l@example.com>", 501, "5.1.3")
	domain := strings.Repeat("d", 63) + "." + strings.Repeat("d", 63) + "." + strings.Repeat("d", 63) + ".example"
	path := local64 + "@" + domain // 64 + 1 + 199 = 264 octets, 266 with the brackets
	r.cmd("MAIL FROM:<"+path+">", 501, "5.1.3")
	r.cmd("MAIL FROM:<"+local64+"@example.com>", 250, "2.0.0")
	r.cmd("RCPT TO:<"+path+">", 501, "5.1.3")
	r.cmd("RCPT TO:<"+strings.Repeat("r", 65)+"@example.net>", 501, "5.1.3")
	r.cmd("RCPT TO:<b@example.net>", 250, "2.0.0")
	r.cmd("QUIT", 221, "")
	r.closed()
	require.NotContains(t, logs.String(), long[:1000], "the log quotes at most a bounded prefix")
	require.Empty(t, f.h.all())
}

func TestAuthLineLimit(t *testing.T) {
	f := start(t, testConfig())
	r := dialRaw(t, f.addr)
	r.cmd("EHLO client.test", 250, "")
	r.cmd("AUTH PLAIN", 334, "")
	r.cmd(strings.Repeat("A", 13000), 500, "5.5.6")
	r.cmd("AUTH PLAIN "+b64("\x00crm\x00"+testPassword), 235, "2.0.0")
}

// TestCommandCap: a connection may send maxCommands commands, then it is told to
// reconnect.
func TestCommandCap(t *testing.T) {
	cfg := testConfig()
	f := start(t, cfg, func(s *Server) { s.maxCmds = 4 })
	require.NoError(t, f.srv.SetConfig(cfg)) // a generation with the smaller cap
	r := dialRaw(t, f.addr)
	r.cmd("EHLO client.test", 250, "")
	for range 3 {
		r.cmd("NOOP", 250, "")
	}
	r.cmd("NOOP", 421, "4.7.0")
	r.closed()
}

// TestSessionLifetime: a client that keeps sending commands, each within the timeout, is
// still cut at the end of the session's lifetime.
func TestSessionLifetime(t *testing.T) {
	f := start(t, testConfig(), func(s *Server) { s.lifetime = 400 * time.Millisecond })
	r := dialRaw(t, f.addr)
	r.cmd("EHLO client.test", 250, "")
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		r.send("NOOP")
		code, _ := r.read()
		if code == 421 {
			r.closed()
			return
		}
		require.Equal(t, 250, code)
	}
	t.Fatal("the session outlived its lifetime")
}

// TestDataLineDeadline: the timeout applies to each line of DATA, not to the whole message:
// a client that sends a line every 100 ms for well over the timeout is not cut; one that
// goes silent mid-message is.
func TestDataLineDeadline(t *testing.T) {
	cfg := testConfig()
	cfg.SMTP.Timeout = config.Duration{Duration: 400 * time.Millisecond}
	f := start(t, cfg)

	r := dialRaw(t, f.addr)
	r.envelope()
	r.cmd("DATA", 354, "")
	r.write("Subject: slow\r\n\r\n")
	for i := range 15 { // 1.5 s in all, almost four times the timeout
		time.Sleep(100 * time.Millisecond)
		r.write(strings.Repeat("x", i) + "\r\n")
	}
	r.cmd(".", 250, "2.0.0")
	require.Len(t, f.h.all(), 1)

	r = dialRaw(t, f.addr)
	r.envelope()
	r.cmd("DATA", 354, "")
	r.write("Subject: silent\r\n\r\nhalf a line")
	time.Sleep(time.Second)
	r.expect(421, "4.4.2")
	r.closed()
	require.Len(t, f.h.all(), 1, "nothing accepted from the silent client")
}

func TestBareNewlinePolicy(t *testing.T) {
	for _, tt := range []struct {
		name string
		body string
	}{
		{"bare LF", "Subject: x\r\n\r\nline\nnext\r\n"},
		{"bare CR", "Subject: x\r\n\r\nline\rnext\r\n"},
		{"CR before CRLF", "Subject: x\r\n\r\nline\r\r\n"},
		{"CR in a header hiding a From", "Subject: x\rFrom: evil@attacker.example\r\n\r\nbody\r\n"},
		{"LF . LF", "Subject: x\r\n\r\na\n.\nb\r\n"},
	} {
		t.Run(tt.name+"/reject", func(t *testing.T) {
			cfg := testConfig()
			cfg.SMTP.BareNewline = "reject"
			f := start(t, cfg)
			r := dialRaw(t, f.addr)
			r.envelope()
			r.cmd("DATA", 354, "")
			r.cmd(tt.body+".", 550, "5.6.0 bare CR/LF not allowed")
			require.Empty(t, f.h.all())
			// The session goes on.
			r.cmd("MAIL FROM:<a@example.com>", 250, "2.0.0")
		})
		t.Run(tt.name+"/normalize", func(t *testing.T) {
			// The front end hands the message over as received; the pipeline writes it
			// as CRLF (pipeline.TestCRLF).
			f := start(t, testConfig())
			r := dialRaw(t, f.addr)
			r.envelope()
			r.cmd("DATA", 354, "")
			r.cmd(tt.body+".", 250, "2.0.0")
			msgs := f.h.all()
			require.Len(t, msgs, 1)
			require.Equal(t, tt.body, string(msgs[0].Data))
		})
	}
	require.False(t, hasBareNewline([]byte("a\r\nb\r\n")))
	require.False(t, hasBareNewline(nil))
}

func TestConnectionLimits(t *testing.T) {
	t.Run("per ip", func(t *testing.T) {
		cfg := testConfig()
		cfg.SMTP.MaxConnectionsIP = 3
		f := start(t, cfg)
		var open []*raw
		for range 3 {
			open = append(open, dialRaw(t, f.addr))
		}
		over := dialRawNoGreeting(t, f.addr)
		over.expect(421, "4.7.0")
		over.closed()
		// Another address is not affected.
		other := dialFrom(t, "127.0.0.2", f.addr)
		other.cmd("EHLO client.test", 250, "")
		// A slot frees when a connection ends.
		open[0].cmd("QUIT", 221, "")
		open[0].closed()
		require.Eventually(t, func() bool {
			r := dialRawNoGreeting(t, f.addr)
			code, _, err := r.tp.ReadResponse(0)
			return err == nil && code == 220
		}, 5*time.Second, 20*time.Millisecond)
	})
	t.Run("total", func(t *testing.T) {
		cfg := testConfig()
		cfg.SMTP.MaxConnections = 2
		cfg.SMTP.MaxConnectionsIP = 2
		f := start(t, cfg)
		dialRaw(t, f.addr)
		dialFrom(t, "127.0.0.2", f.addr)
		over := dialRawNoGreeting(t, f.addr)
		over.expect(421, "4.7.0")
		over.closed()
	})
	t.Run("flood from one address", func(t *testing.T) {
		cfg := testConfig()
		f := start(t, cfg) // 50 per address by default
		var refused atomic.Int32
		var wg sync.WaitGroup
		for range 300 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := net.Dial("tcp", f.addr)
				if err != nil {
					return
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				buf := make([]byte, 3)
				if _, err := c.Read(buf); err == nil && string(buf) == "421" {
					refused.Add(1)
				}
				time.Sleep(300 * time.Millisecond) // hold the connection
			}()
		}
		// Meanwhile another client is served at once.
		start := time.Now()
		other := dialFrom(t, "127.0.0.2", f.addr)
		other.cmd("EHLO client.test", 250, "")
		require.Less(t, time.Since(start), 2*time.Second)
		wg.Wait()
		require.GreaterOrEqual(t, refused.Load(), int32(250-50))
	})
}

func dialFrom(t testing.TB, local, addr string) *raw {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c, err := d.Dial("tcp", addr)
	require.NoError(t, err)
	return newRaw(t, c)
}

// counting wraps bcrypt to count comparisons and the most that ran at once.
type counting struct {
	calls, running, peak atomic.Int32
}

func (c *counting) compare(hash, pw []byte) error {
	c.calls.Add(1)
	n := c.running.Add(1)
	defer c.running.Add(-1)
	for {
		p := c.peak.Load()
		if n <= p || c.peak.CompareAndSwap(p, n) {
			break
		}
	}
	time.Sleep(5 * time.Millisecond)
	return bcrypt.CompareHashAndPassword(hash, pw)
}

// TestAuthLockout: past auth_failures failures from one address, AUTH answers 454 without
// hashing, even with the right password, until the window passes.
func TestAuthLockout(t *testing.T) {
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var cnt counting
	cfg := testConfig()
	cfg.SMTP.AuthFailures = 5
	f := start(t, cfg, func(s *Server) {
		s.now = func() time.Time { return clock }
		s.compare = cnt.compare
	})
	wrong := "AUTH PLAIN " + b64("\x00crm\x00wrong")
	right := "AUTH PLAIN " + b64("\x00crm\x00"+testPassword)
	for i := range 5 {
		r := dialRaw(t, f.addr)
		r.cmd("EHLO client.test", 250, "")
		if i < 2 {
			r.cmd(wrong, 535, "5.7.8")
		} else {
			r.cmd(wrong, 421, "4.7.0") // past maxAuthFailures the connection is closed too
		}
	}
	require.EqualValues(t, 5, cnt.calls.Load())
	r := dialRaw(t, f.addr)
	r.cmd("EHLO client.test", 250, "")
	r.cmd(right, 454, "4.7.0")
	r.cmd(wrong, 454, "4.7.0")
	require.EqualValues(t, 5, cnt.calls.Load(), "no bcrypt while locked out")

	clock = clock.Add(failWindow + time.Second)
	r.cmd(right, 235, "2.0.0")
}

// TestAuthLockoutPerLogin: failures for one login from several addresses lock that login
// (a distributed guess), not the other users.
func TestAuthLockoutPerLogin(t *testing.T) {
	cfg := testConfig()
	cfg.SMTP.AuthFailures = 3
	cfg.Users = append(cfg.Users, config.User{Name: "erp", PasswordHash: testHash()})
	f := start(t, cfg)
	for _, ip := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"} {
		r := dialFrom(t, ip, f.addr)
		r.cmd("EHLO client.test", 250, "")
		r.send("AUTH PLAIN " + b64("\x00crm\x00wrong"))
		code, _ := r.read()
		require.Contains(t, []int{535, 421}, code) // 421: the third failure also ends the connection
	}
	r := dialFrom(t, "127.0.0.5", f.addr)
	r.cmd("EHLO client.test", 250, "")
	r.cmd("AUTH PLAIN "+b64("\x00crm\x00"+testPassword), 454, "4.7.0")
	r.cmd("AUTH PLAIN "+b64("\x00erp\x00"+testPassword), 235, "2.0.0")
}

// TestAuthParallelFlood: 100 wrong passwords at once from one address cost exactly
// auth_failures bcrypt comparisons, never more than the slots at a time.
func TestAuthParallelFlood(t *testing.T) {
	var cnt counting
	cfg := testConfig()
	cfg.SMTP.MaxConnectionsIP = 200
	f := start(t, cfg, func(s *Server) { s.compare = cnt.compare })
	var wg sync.WaitGroup
	codes := make(chan int, 100)
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", f.addr)
			if err != nil {
				codes <- -1
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			tp := textproto.NewConn(c)
			code := -1
			if _, _, err := tp.ReadResponse(220); err == nil {
				tp.PrintfLine("EHLO client.test")
				if _, _, err := tp.ReadResponse(250); err == nil {
					tp.PrintfLine("AUTH PLAIN %s", b64("\x00crm\x00wrong"))
					code, _, _ = tp.ReadResponse(0)
				}
			}
			codes <- code
		}()
	}
	wg.Wait()
	close(codes)
	seen := map[int]int{}
	for c := range codes {
		seen[c]++
	}
	require.EqualValues(t, testConfig().SMTP.AuthFailures, cnt.calls.Load(), "replies %v", seen)
	require.LessOrEqual(t, cnt.peak.Load(), int32(cap(f.srv.guard.slots)))
	require.Equal(t, 100-testConfig().SMTP.AuthFailures, seen[454], "replies %v", seen)
	require.Equal(t, testConfig().SMTP.AuthFailures, seen[535]+seen[421], "replies %v", seen)
}

func TestAuthGuardBounded(t *testing.T) {
	g := newAuthGuard(failWindow)
	now := time.Now()
	for i := range maxFailEntries + 1000 {
		ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		g.fail(failKey(ip), "", now)
	}
	require.Len(t, g.ips, maxFailEntries)
	require.Equal(t, maxFailEntries, g.lru.Len())
	// The oldest were forgotten, the newest are kept.
	require.NotContains(t, g.ips, failKey(netip.AddrFrom4([4]byte{10, 0, 0, 0})))
	last := maxFailEntries + 999
	require.Contains(t, g.ips, failKey(netip.AddrFrom4([4]byte{10, byte(last >> 16), byte(last >> 8), byte(last)})))
}

// TestReloadRevokesUser: after a reload that removes a user (or changes its password), a
// session that authenticated before cannot start another message.
func TestReloadRevokesUser(t *testing.T) {
	for _, tt := range []struct {
		name   string
		change func(*config.Config)
	}{
		{"removed", func(c *config.Config) { c.Users = nil }},
		{"password changed", func(c *config.Config) {
			h, err := bcrypt.GenerateFromPassword([]byte("new"), bcrypt.MinCost)
			require.NoError(t, err)
			c.Users[0].PasswordHash = string(h)
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.SMTP.Networks = nil // only AUTH lets a client send
			f := start(t, cfg)
			c := dial(t, f.addr)
			require.NoError(t, c.Auth(sasl.NewPlainClient("", "crm", testPassword)))
			_, err := sendMail(t, c, "a@example.com", []string{"b@example.net"}, testBody)
			require.NoError(t, err)

			next := testConfig()
			next.SMTP.Networks = nil
			tt.change(next)
			require.NoError(t, f.srv.SetConfig(next))
			_, err = sendMail(t, c, "a@example.com", []string{"b@example.net"}, testBody)
			code, _ := smtpCode(t, err)
			require.Equal(t, 530, code)
			require.Len(t, f.h.all(), 1)
		})
	}
}

// TestReloadUnitApplies: the unit a session's messages carry is the user's unit now.
func TestReloadUnitApplies(t *testing.T) {
	cfg := testConfig()
	f := start(t, cfg)
	c := dial(t, f.addr)
	require.NoError(t, c.Auth(sasl.NewPlainClient("", "crm", testPassword)))
	next := testConfig()
	next.Users[0].Unit = "support"
	require.NoError(t, f.srv.SetConfig(next))
	_, err := sendMail(t, c, "a@example.com", []string{"b@example.net"}, testBody)
	require.NoError(t, err)
	msgs := f.h.all()
	require.Len(t, msgs, 1)
	require.Equal(t, "support", msgs[0].UserUnit)
}

func TestNetworkBucketsBounded(t *testing.T) {
	l := newLimits()
	now := time.Now()
	r := config.Rate{N: 1, Per: time.Hour}
	for i := range maxNetBuckets + 5000 {
		ip := netip.AddrFrom4([4]byte{byte(11 + i>>16), byte(i >> 8), byte(i), 1})
		require.Empty(t, l.allow(now, "", config.Rate{}, networkKey(ip), r))
		require.LessOrEqual(t, len(l.nets), maxNetBuckets)
	}
}
