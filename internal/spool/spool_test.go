package spool

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	"net"
	"net/mail"
	"net/textproto"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"relay/internal/config"
	"relay/internal/deliver"
)

func TestSubmitDeliver(t *testing.T) {
	e := newEnv(t)
	s := e.open()
	run(t, s)

	for i := range 3 {
		id := fmt.Sprintf("msg%d", i)
		require.NoError(t, s.Submit(context.Background(), id, "alice@example.com",
			[]string{"bob@example.net", "carol@example.org", "bob@example.net"}, msg(id)))
	}
	waitFor(t, "spool empty", func() bool { return s.Stats().Depth == 0 })

	got := e.sink.deliveries()
	require.Len(t, got, 3)
	for _, d := range got {
		require.Equal(t, "alice@example.com", d.From)
		require.Equal(t, []string{"bob@example.net", "carol@example.org"}, d.To, "duplicates are sent once")
		require.Contains(t, string(d.Data), "Subject: msg")
	}
	require.Empty(t, files(t, e.dir))
	require.Empty(t, e.bounces.all())
	st := s.Stats()
	require.EqualValues(t, 6, st.Delivered)
	require.Zero(t, st.Deferred)
}

func TestSubmitLargeMessageReadBack(t *testing.T) {
	// Above memMessage the message is not kept in memory: delivery reads the file.
	e := newEnv(t)
	s := e.open()
	big := append(msg("big"), []byte(strings.Repeat("0123456789abcdef\r\n", memMessage/18+10))...)
	require.NoError(t, s.Submit(context.Background(), "big", "alice@example.com", []string{"bob@example.net"}, big))
	s.mu.Lock()
	require.Nil(t, s.msgs["big"].data)
	s.mu.Unlock()
	run(t, s)
	waitFor(t, "delivered", func() bool { return s.Stats().Depth == 0 })
	require.Equal(t, big, e.sink.deliveries()[0].Data)
}

func TestTemporaryFailureThenRecovery(t *testing.T) {
	e := newEnv(t)
	e.sink.setRcpt(func(string) error { return reply(451, [3]int{4, 3, 0}, "try later") })
	s := e.open()
	run(t, s)

	for i := range 5 {
		require.NoError(t, s.Submit(context.Background(), fmt.Sprintf("m%d", i), "alice@example.com",
			[]string{"bob@example.net", "carol@example.org"}, msg("retry")))
	}
	// Every message is retried at least twice, and the state of each attempt is on disk.
	waitFor(t, "retried", func() bool {
		l, err := List(e.dir)
		require.NoError(t, err)
		for _, ent := range l {
			if ent.Attempts < 2 {
				return false
			}
		}
		return len(l) == 5
	})
	l, err := List(e.dir)
	require.NoError(t, err)
	require.Contains(t, l[0].LastError, "451 4.3.0 try later")
	require.Equal(t, []string{"bob@example.net", "carol@example.org"}, l[0].To)
	require.Empty(t, e.sink.deliveries())

	e.sink.setRcpt(nil)
	waitFor(t, "delivered", func() bool { return s.Stats().Depth == 0 })
	require.Equal(t, map[string]int{"bob@example.net": 5, "carol@example.org": 5}, e.sink.rcpts())
	require.Empty(t, files(t, e.dir), "state files go with their message")
	require.Empty(t, e.bounces.all())
}

// parsedDSN is a DSN taken apart with the standard library, as a receiver would.
type parsedDSN struct {
	header     mail.Header
	text       string
	perMessage textproto.MIMEHeader
	perRcpt    []textproto.MIMEHeader
	headers    string // the text/rfc822-headers part
	types      []string
}

func parseDSN(t *testing.T, b []byte) parsedDSN {
	t.Helper()
	m, err := mail.ReadMessage(strings.NewReader(string(b)))
	require.NoError(t, err)
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	require.NoError(t, err)
	require.Equal(t, "multipart/report", mt)
	require.Equal(t, "delivery-status", params["report-type"])
	p := parsedDSN{header: m.Header}
	mr := multipart.NewReader(m.Body, params["boundary"])
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		ct, _, err := mime.ParseMediaType(part.Header.Get("Content-Type"))
		require.NoError(t, err)
		p.types = append(p.types, ct)
		body, err := io.ReadAll(part) // multipart decodes quoted-printable itself
		require.NoError(t, err)
		switch ct {
		case "text/plain":
			p.text = string(body)
		case "message/delivery-status", "message/global-delivery-status":
			// RFC 3464 §2.1: groups of fields separated by blank lines.
			r := textproto.NewReader(bufio.NewReader(strings.NewReader(string(body))))
			p.perMessage, err = r.ReadMIMEHeader()
			require.NoError(t, err)
			for {
				h, err := r.ReadMIMEHeader()
				if len(h) > 0 {
					p.perRcpt = append(p.perRcpt, h)
				}
				if err == io.EOF {
					break
				}
				require.NoError(t, err)
			}
		case "text/rfc822-headers", "message/global-headers":
			p.headers = string(body)
		}
	}
	return p
}

func TestPermanentFailureDSN(t *testing.T) {
	e := newEnv(t)
	e.sink.setRcpt(func(to string) error {
		switch to {
		case "gone@example.net":
			return reply(550, [3]int{5, 1, 1}, "no such user")
		case "full@example.net":
			return reply(552, [3]int{5, 2, 2}, "mailbox full")
		}
		return nil
	})
	s := e.open()
	run(t, s)
	require.NoError(t, s.Submit(context.Background(), "q1", "alice@example.com",
		[]string{"bob@example.net", "gone@example.net", "carol@example.org", "full@example.net"}, msg("perm")))
	waitFor(t, "done", func() bool { return s.Stats().Depth == 0 })

	require.Equal(t, map[string]int{"bob@example.net": 1, "carol@example.org": 1}, e.sink.rcpts())
	b := e.bounces.all()
	require.Len(t, b, 1, "one DSN per attempt, for all its failures")
	require.Equal(t, "alice@example.com", b[0].To)

	p := parseDSN(t, b[0].DSN)
	require.Equal(t, []string{"text/plain", "message/delivery-status", "text/rfc822-headers"}, p.types)
	require.Equal(t, "<alice@example.com>", p.header.Get("To"))
	require.Equal(t, "auto-replied", p.header.Get("Auto-Submitted"))
	require.Contains(t, p.header.Get("From"), "MAILER-DAEMON@relay.test")
	require.Equal(t, "dns; relay.test", p.perMessage.Get("Reporting-MTA"))
	_, err := mail.ParseDate(p.perMessage.Get("Arrival-Date"))
	require.NoError(t, err)
	require.Len(t, p.perRcpt, 2)
	require.Equal(t, "rfc822; gone@example.net", p.perRcpt[0].Get("Final-Recipient"))
	require.Equal(t, "failed", p.perRcpt[0].Get("Action"))
	require.Equal(t, "5.1.1", p.perRcpt[0].Get("Status"))
	require.Equal(t, "smtp; 550 5.1.1 no such user", p.perRcpt[0].Get("Diagnostic-Code"))
	require.Equal(t, "rfc822; full@example.net", p.perRcpt[1].Get("Final-Recipient"))
	require.Equal(t, "5.2.2", p.perRcpt[1].Get("Status"))
	require.Equal(t, "smtp; 552 5.2.2 mailbox full", p.perRcpt[1].Get("Diagnostic-Code"))
	require.Contains(t, p.text, "<gone@example.net>: 550 5.1.1 no such user")
	require.Contains(t, p.headers, "Subject: perm\r\n")
	require.NotContains(t, p.headers, "Hello.", "headers only")
	require.EqualValues(t, 2, s.Stats().Bounced)
}

func TestTransactionRefusedBouncesAll(t *testing.T) {
	// A 5xx to MAIL FROM (a transaction-level error) fails every recipient.
	e := newEnv(t)
	e.opts.Sender = senderFunc(func(context.Context, string, []string, []byte) ([]RcptResult, error) {
		return nil, &deliver.Error{Code: 550, Enhanced: [3]int{5, 7, 1}, Msg: "sender rejected"}
	})
	s := e.open()
	run(t, s)
	require.NoError(t, s.Submit(context.Background(), "tx", "alice@example.com", []string{"a@example.net", "b@example.net"}, msg("tx")))
	waitFor(t, "done", func() bool { return s.Stats().Depth == 0 })
	b := e.bounces.all()
	require.Len(t, b, 1)
	p := parseDSN(t, b[0].DSN)
	require.Len(t, p.perRcpt, 2)
	require.Equal(t, "smtp; 550 5.7.1 sender rejected", p.perRcpt[1].Get("Diagnostic-Code"))
}

type senderFunc func(ctx context.Context, from string, to []string, data []byte) ([]RcptResult, error)

func (f senderFunc) Send(ctx context.Context, from string, to []string, data []byte) ([]RcptResult, error) {
	return f(ctx, from, to, data)
}

func TestNullSenderGetsNoDSN(t *testing.T) {
	e := newEnv(t)
	e.sink.setRcpt(func(to string) error { return reply(550, [3]int{5, 1, 1}, "no such user") })
	s := e.open()
	run(t, s)
	require.NoError(t, s.Submit(context.Background(), "null", "", []string{"gone@example.net"}, msg("null")))
	// The DSN would be sent before the message leaves the spool.
	waitFor(t, "done", func() bool { return s.Stats().Depth == 0 })
	require.Empty(t, e.bounces.all())
	require.EqualValues(t, 1, s.Stats().Bounced)
	require.Empty(t, files(t, e.dir))
}

func TestMaxAgeDSN(t *testing.T) {
	e := newEnv(t)
	e.sink.setRcpt(func(to string) error {
		if to == "slow@example.net" {
			return reply(451, [3]int{4, 7, 0}, "greylisted")
		}
		return nil
	})
	s := e.open()
	run(t, s)
	require.NoError(t, s.Submit(context.Background(), "old", "alice@example.com",
		[]string{"bob@example.net", "slow@example.net"}, msg("old")))
	waitFor(t, "deferred", func() bool { return s.Stats().Deferred >= 1 })
	require.Empty(t, e.bounces.all(), "not expired yet")

	e.clock.advance(e.opts.MaxAge)
	waitFor(t, "expired", func() bool { return s.Stats().Depth == 0 })
	require.Equal(t, map[string]int{"bob@example.net": 1}, e.sink.rcpts())
	b := e.bounces.all()
	require.Len(t, b, 1)
	p := parseDSN(t, b[0].DSN)
	require.Len(t, p.perRcpt, 1)
	require.Equal(t, "rfc822; slow@example.net", p.perRcpt[0].Get("Final-Recipient"))
	require.Equal(t, "failed", p.perRcpt[0].Get("Action"))
	require.Equal(t, "4.4.7", p.perRcpt[0].Get("Status"))
	require.Equal(t, "smtp; 451 4.7.0 greylisted", p.perRcpt[0].Get("Diagnostic-Code"))
	require.Contains(t, p.text, "delivery time expired")
}

func TestBounceFailureKeepsRecipient(t *testing.T) {
	e := newEnv(t)
	e.sink.setRcpt(func(string) error { return reply(550, [3]int{5, 1, 1}, "no such user") })
	e.bounces.setErr(errTest)
	s := e.open()
	run(t, s)
	require.NoError(t, s.Submit(context.Background(), "b1", "alice@example.com", []string{"gone@example.net"}, msg("b1")))
	waitFor(t, "failed twice", func() bool {
		l, err := List(e.dir)
		return err == nil && len(l) == 1 && l[0].Attempts >= 2
	})
	l, _ := List(e.dir)
	require.Equal(t, []string{"gone@example.net"}, l[0].To, "no DSN, so not done")
	require.Contains(t, l[0].LastError, "DSN failed")

	e.bounces.setErr(nil)
	waitFor(t, "bounced", func() bool { return s.Stats().Depth == 0 })
	require.Len(t, e.bounces.all(), 1)
}

func TestRecovery(t *testing.T) {
	e := newEnv(t)
	// A first process spools a message and dies before delivering it, in the middle of
	// writing another one, and a message file is damaged.
	s1 := e.open()
	require.NoError(t, s1.Submit(context.Background(), "kept", "alice@example.com", []string{"bob@example.net"}, msg("kept")))
	s1.Close()
	require.NoError(t, os.WriteFile(filepath.Join(e.dir, tmpPrefix+"123"), []byte(magic+`{"from":"x"`), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(e.dir, "damaged.msg"), []byte(magic+`{"from":"x","to":["y"],"size":100}`+"\nshort"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(e.dir, "orphan.state"), []byte(`{}`), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(e.dir, segPrefix+"0000000000000001"+doneSuffix), []byte("x\n"), 0o600))

	s2 := e.open()
	require.Equal(t, []string{"damaged.bad"}, files(t, e.dir))
	require.Equal(t, 1, s2.Stats().Depth)
	run(t, s2)
	waitFor(t, "delivered", func() bool { return s2.Stats().Depth == 0 })
	require.Equal(t, map[string]int{"bob@example.net": 1}, e.sink.rcpts())
	require.Equal(t, []string{"damaged.bad"}, files(t, e.dir))
	segs, _ := segFiles(t, e.dir)
	require.Len(t, segs, 0, "the recovered segment is retired once its message is delivered; no stray done file")
}

// A message file (a message moved out of its segment) whose blocks were never written has
// the right size and the wrong content: its checksum sets it aside.
func TestRecoveryMessageFileChecksum(t *testing.T) {
	e := newEnv(t)
	for _, id := range []string{"torn", "good"} {
		data := msg(id)
		line, err := encodeEnvelope(envelope{From: "alice@example.com", To: rawStrings{id + "@example.net"}, Received: time.Now(), Size: len(data), CRC: checksum(data)})
		require.NoError(t, err)
		if id == "torn" {
			copy(data[len(data)-8:], make([]byte, 8)) // zeroed blocks: same size, other content
		}
		require.NoError(t, os.WriteFile(msgPath(e.dir, id), append(line, data...), 0o600))
	}
	s := e.open()
	require.ElementsMatch(t, []string{"good.msg", "torn.bad"}, files(t, e.dir))
	run(t, s)
	waitFor(t, "delivered", func() bool { return s.Stats().Depth == 0 })
	require.Equal(t, map[string]int{"good@example.net": 1}, e.sink.rcpts())
}

// After a crash a segment is read to its end: records that were never acknowledged (torn,
// zeroed), the old content of a recycled file and a damaged record in the middle are
// skipped; every other record is delivered, except those marked done.
func TestRecoverySegment(t *testing.T) {
	for _, tc := range []struct {
		name    string
		damage  func(b []byte, recs []segRecord, segID string) []byte
		want    []string // recipients delivered after the restart
		damaged bool     // a "damaged records" error is logged
	}{
		{"intact", func(b []byte, _ []segRecord, _ string) []byte { return b }, []string{"r0", "r1", "r2", "r3"}, false},
		{"torn last record", func(b []byte, recs []segRecord, _ string) []byte { return b[:recs[3].off+10] }, []string{"r0", "r1", "r2"}, false},
		{"zeroed last record", func(b []byte, recs []segRecord, _ string) []byte {
			copy(b[recs[3].off:], make([]byte, 20))
			return b
		}, []string{"r0", "r1", "r2"}, false},
		{"header of the last record zeroed", func(b []byte, recs []segRecord, _ string) []byte {
			copy(b[recs[2].next:], make([]byte, 30))
			return b
		}, []string{"r0", "r1", "r2"}, false},
		{"damaged record in the middle", func(b []byte, recs []segRecord, _ string) []byte {
			copy(b[recs[1].off+5:], "XXXX")
			return b
		}, []string{"r0", "r2", "r3"}, true},
		{"old records of a recycled file after the end", func(b []byte, recs []segRecord, segID string) []byte {
			old := slices.Clone(b)
			start := 0
			for _, r := range recs {
				sealRecordHeader(old[start:r.off], "00000000000000aa") // valid, of another segment
				start = r.next
			}
			return append(b, old...)
		}, []string{"r0", "r1", "r2", "r3"}, false},
		{"flipped bit in a recipient", func(b []byte, recs []segRecord, _ string) []byte {
			// The message's checksum holds; only the header's own tells.
			i := recs[0].next + bytes.Index(b[recs[0].next:recs[1].off], []byte("r1@example.net"))
			b[i+4] ^= 0x01 // r1@dxample.net
			return b
		}, []string{"r0", "r2", "r3"}, true},
		{"flipped bit in a size", func(b []byte, recs []segRecord, _ string) []byte {
			i := recs[1].next + bytes.Index(b[recs[1].next:recs[2].off], []byte(`"size":`)) + len(`"size":`)
			b[i] ^= 0x01
			return b
		}, []string{"r0", "r1", "r3"}, true},
		{"done records", func(b []byte, _ []segRecord, _ string) []byte { return b }, []string{"r1", "r3"}, false},
		{"damaged done file", func(b []byte, _ []segRecord, _ string) []byte { return b }, []string{"r1", "r3"}, false},
		{"torn done record", func(b []byte, _ []segRecord, _ string) []byte { return b }, []string{"r1", "r2", "r3"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			var logs strings.Builder
			e.opts.Log = slog.New(slog.NewTextHandler(&logs, nil))
			s1 := e.open()
			for i := range 4 {
				id := fmt.Sprintf("m%d", i)
				require.NoError(t, s1.Submit(context.Background(), id, "alice@example.com", []string{fmt.Sprintf("r%d@example.net", i)}, msg(id)))
			}
			s1.Close()
			segs, _ := segFiles(t, e.dir)
			require.Len(t, segs, 2, "one log and its done file")
			segID := segIDOf(segs[1])
			path := segPath(e.dir, segID)
			b, err := os.ReadFile(path)
			require.NoError(t, err)
			recs, damaged := parseSegment(b, segID)
			require.Len(t, recs, 4)
			require.Zero(t, damaged)
			require.NoError(t, os.WriteFile(path, tc.damage(b, recs, segID), 0o600))
			switch tc.name {
			case "done records":
				require.NoError(t, os.WriteFile(donePath(e.dir, segID), []byte("m0\nm2\nm"), 0o600))
			case "torn done record":
				// The append of "m12\n" cut short: "m1" is not a done record.
				require.NoError(t, os.WriteFile(donePath(e.dir, segID), []byte("m0\nm1"), 0o600))
			case "damaged done file":
				// Blocks a power failure left unwritten read as zeros: one long line.
				done := slices.Concat([]byte("m0\n"), make([]byte, 100<<10), []byte("\nm2\n\x00\x00"))
				require.NoError(t, os.WriteFile(donePath(e.dir, segID), done, 0o600))
			}

			// The admin readers skip what recovery skips.
			l, err := List(e.dir)
			require.NoError(t, err)
			var listed []string
			for _, ent := range l {
				listed = append(listed, strings.TrimSuffix(ent.To[0], "@example.net"))
			}
			require.ElementsMatch(t, tc.want, listed)
			for i := range 4 {
				id := fmt.Sprintf("m%d", i)
				ent, _, err := Show(e.dir, id)
				if slices.Contains(tc.want, fmt.Sprintf("r%d", i)) {
					require.NoError(t, err)
					require.Equal(t, []string{fmt.Sprintf("r%d@example.net", i)}, ent.To)
				} else {
					require.ErrorIs(t, err, ErrNotFound, id)
				}
			}

			s2 := e.open()
			require.Equal(t, len(tc.want), s2.Stats().Depth)
			run(t, s2)
			waitFor(t, "delivered", func() bool { return s2.Stats().Depth == 0 })
			want := map[string]int{}
			for _, r := range tc.want {
				want[r+"@example.net"] = 1
			}
			require.Equal(t, want, e.sink.rcpts())
			require.Equal(t, tc.damaged, strings.Contains(logs.String(), "damaged records skipped"), logs.String())
		})
	}
}

// Segments rotate at segMax; a segment whose messages are all delivered is retired, kept
// as a spare and written over by a later segment.
func TestSegmentsRetireAndRecycle(t *testing.T) {
	e := newEnv(t)
	s := e.open()
	s.segMax = 1 // every batch starts a segment
	run(t, s)
	for i := range 10 {
		id := fmt.Sprintf("m%d", i)
		require.NoError(t, s.Submit(context.Background(), id, "alice@example.com", []string{id + "@example.net"}, msg(id)))
	}
	waitFor(t, "delivered", func() bool { return s.Stats().Depth == 0 })
	segs, spares := segFiles(t, e.dir)
	require.Len(t, segs, 2, "only the current segment and its done file are left")
	require.NotEmpty(t, spares)
	require.LessOrEqual(t, len(spares), maxSpares)
	require.Equal(t, 1, s.Stats().Segments)
	require.Empty(t, files(t, e.dir))

	old := map[uint64]bool{}
	for _, n := range append(segs, spares...) {
		if !strings.HasSuffix(n, doneSuffix) {
			old[inode(t, filepath.Join(e.dir, n))] = true
		}
	}
	require.NoError(t, s.Submit(context.Background(), "x", "alice@example.com", []string{"x@example.net"}, msg("x")))
	waitFor(t, "delivered", func() bool { return s.Stats().Depth == 0 })
	segs, _ = segFiles(t, e.dir)
	require.Len(t, segs, 2)
	require.True(t, old[inode(t, filepath.Join(e.dir, segs[1]))], "the new segment is a retired one written over, not a new file")
	require.Equal(t, 11, len(e.sink.deliveries()))
}

// A message that waits for a retry moves out of its segment into a file of its own, so the
// segment can be retired; the state and the message survive a restart.
func TestDeferredMovesOut(t *testing.T) {
	e := newEnv(t)
	e.opts.RetryMin, e.opts.RetryMax = time.Hour, time.Hour
	e.sink.setRcpt(func(to string) error {
		if to == "later@example.net" {
			return reply(451, [3]int{4, 3, 0}, "later")
		}
		return nil
	})
	s := e.open()
	s.segMax = 1
	stop := run(t, s)
	require.NoError(t, s.Submit(context.Background(), "wait", "alice@example.com", []string{"now@example.net", "later@example.net"}, msg("wait")))
	waitFor(t, "deferred", func() bool { return s.Stats().Deferred == 1 })
	waitFor(t, "moved out", func() bool { return slices.Equal([]string{"wait.msg", "wait.state"}, files(t, e.dir)) })
	require.NoError(t, s.Submit(context.Background(), "next", "alice@example.com", []string{"now@example.net"}, msg("next")))
	waitFor(t, "delivered", func() bool { return s.Stats().Depth == 1 })
	require.Equal(t, 1, s.Stats().Segments, "the first segment was retired")
	stop()
	s.Close()

	e.sink.setRcpt(nil)
	s2 := e.open()
	require.NoError(t, Retry(e.dir, "wait"))
	run(t, s2)
	waitFor(t, "delivered", func() bool { return s2.Stats().Depth == 0 })
	require.Equal(t, map[string]int{"now@example.net": 2, "later@example.net": 1}, e.sink.rcpts())
	require.Empty(t, files(t, e.dir))
}

// The admin commands see, show and delete a message that is still in its segment, from
// another process (here: without the server running).
func TestAdminSegment(t *testing.T) {
	e := newEnv(t)
	s := e.open()
	require.NoError(t, s.Submit(context.Background(), "s1", "alice@example.com", []string{"a@example.net"}, msg("s1")))
	require.NoError(t, s.Submit(context.Background(), "s2", "", []string{"b@example.net"}, msg("s2")))
	l, err := List(e.dir)
	require.NoError(t, err)
	require.Len(t, l, 2)
	require.Equal(t, "s1", l[0].ID)
	require.Equal(t, []string{"a@example.net"}, l[0].To)
	require.Equal(t, len(msg("s1")), l[0].Size)
	_, data, err := Show(e.dir, "s2")
	require.NoError(t, err)
	require.Equal(t, msg("s2"), data)
	require.NoError(t, Delete(e.dir, "s2"))
	require.ErrorIs(t, Delete(e.dir, "s2"), ErrNotFound)
	l, err = List(e.dir)
	require.NoError(t, err)
	require.Len(t, l, 1)
	s.Close()

	s2 := e.open()
	require.Equal(t, 1, s2.Stats().Depth)
	run(t, s2)
	waitFor(t, "delivered", func() bool { return s2.Stats().Depth == 0 })
	require.Equal(t, map[string]int{"a@example.net": 1}, e.sink.rcpts())
}

func TestCrashThenRestart(t *testing.T) {
	e := newEnv(t)
	s1 := e.open()
	for i := range 20 {
		require.NoError(t, s1.Submit(context.Background(), fmt.Sprintf("c%02d", i), "alice@example.com", []string{"bob@example.net"}, msg("c")))
	}
	s1.Close() // the process dies: nothing was delivered
	require.Empty(t, e.sink.deliveries())

	s2 := e.open()
	require.Equal(t, 20, s2.Stats().Depth)
	run(t, s2)
	waitFor(t, "delivered", func() bool { return s2.Stats().Depth == 0 })
	require.Equal(t, map[string]int{"bob@example.net": 20}, e.sink.rcpts())
}

func TestDoneRecipientsSurviveRestart(t *testing.T) {
	// bob is delivered in the first attempt, carol deferred; after a restart only carol
	// is sent: a recipient marked done is never pending again.
	e := newEnv(t)
	e.opts.RetryMin, e.opts.RetryMax = time.Hour, time.Hour
	e.sink.setRcpt(func(to string) error {
		if to == "carol@example.org" {
			return reply(452, [3]int{4, 2, 2}, "over quota")
		}
		return nil
	})
	s1 := e.open()
	stop := run(t, s1)
	require.NoError(t, s1.Submit(context.Background(), "part", "alice@example.com", []string{"bob@example.net", "carol@example.org"}, msg("part")))
	waitFor(t, "deferred", func() bool { return s1.Stats().Deferred == 1 })
	stop()
	s1.Close()

	ent, _, err := Show(e.dir, "part")
	require.NoError(t, err)
	require.Equal(t, []string{"carol@example.org"}, ent.To)
	require.Equal(t, []string{"bob@example.net"}, ent.Done)
	require.Equal(t, 1, ent.Attempts)
	require.True(t, ent.NextTry.After(time.Now().Add(30*time.Minute)))

	e.sink.setRcpt(nil)
	e.opts.RetryMin = 10 * time.Millisecond
	s2 := e.open()
	require.NoError(t, Retry(e.dir, "part")) // the next try is an hour away
	run(t, s2)
	waitFor(t, "delivered", func() bool { return s2.Stats().Depth == 0 })
	require.Equal(t, map[string]int{"bob@example.net": 1, "carol@example.org": 1}, e.sink.rcpts())
}

// breakDir makes dir unwritable and returns the function that repairs it. chmod 0500 is
// what an admin's mistake looks like; root ignores it, so as root the directory is
// replaced by a file instead.
func breakDir(t *testing.T, dir string) (repair func()) {
	require.NoError(t, os.Chmod(dir, 0o500))
	f, err := os.Create(filepath.Join(dir, "probe"))
	if err != nil {
		return func() { require.NoError(t, os.Chmod(dir, 0o700)) }
	}
	f.Close()
	require.NoError(t, os.Remove(f.Name()))
	require.NoError(t, os.Chmod(dir, 0o700))
	require.NoError(t, os.Rename(dir, dir+".away"))
	require.NoError(t, os.WriteFile(dir, nil, 0o600))
	return func() {
		require.NoError(t, os.Remove(dir))
		require.NoError(t, os.Rename(dir+".away", dir))
	}
}

func TestUnwritableSpool(t *testing.T) {
	e := newEnv(t)
	s := e.open()
	run(t, s)
	require.NoError(t, s.Submit(context.Background(), "before", "alice@example.com", []string{"bob@example.net"}, msg("before")))
	waitFor(t, "delivered", func() bool { return s.Stats().Depth == 0 })

	// A message already accepted, waiting for a retry while the directory breaks, is
	// not lost: its attempts go on, their state cannot be written, and it is delivered
	// once the directory is back.
	e.sink.setRcpt(func(to string) error {
		if to == "held@example.net" {
			return reply(451, [3]int{4, 3, 0}, "later")
		}
		return nil
	})
	require.NoError(t, s.Submit(context.Background(), "held", "alice@example.com", []string{"held@example.net"}, msg("held")))
	waitFor(t, "deferred", func() bool { return s.Stats().Deferred == 1 })

	repair := breakDir(t, e.dir)
	waitFor(t, "retried while broken", func() bool { return s.Stats().Deferred >= 3 })
	err := s.Submit(context.Background(), "nope", "alice@example.com", []string{"bob@example.net"}, msg("nope"))
	require.Error(t, err)
	var r interface{ SMTPReply() (int, [3]int, string) }
	require.True(t, errors.As(err, &r))
	code, enh, _ := r.SMTPReply()
	require.Equal(t, 451, code)
	require.Equal(t, [3]int{4, 3, 0}, enh)
	require.Error(t, s.Writable())
	require.Equal(t, 1, s.Stats().Depth)

	repair()
	e.sink.setRcpt(nil)
	require.NoError(t, s.Writable())
	require.NoError(t, s.Submit(context.Background(), "nope", "alice@example.com", []string{"bob@example.net"}, msg("nope")), "the id is free again")
	waitFor(t, "delivered", func() bool { return s.Stats().Depth == 0 })
	require.Equal(t, map[string]int{"bob@example.net": 2, "held@example.net": 1}, e.sink.rcpts())
}

func TestOpenLocks(t *testing.T) {
	e := newEnv(t)
	s := e.open()
	_, err := Open(e.opts)
	require.ErrorContains(t, err, "in use by another relay process")
	require.NoError(t, s.Close())
	s2, err := Open(e.opts)
	require.NoError(t, err)
	s2.Close()
}

func TestSubmitErrors(t *testing.T) {
	e := newEnv(t)
	s := e.open()
	ctx := context.Background()
	for _, tc := range []struct {
		name, id string
		to       []string
	}{
		{"empty id", "", []string{"a@b"}},
		{"path in id", "../x", []string{"a@b"}},
		{"hidden id", ".x", []string{"a@b"}},
		{"no recipients", "x", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := s.Submit(ctx, tc.id, "a@b", tc.to, msg("x"))
			var se *Error
			require.ErrorAs(t, err, &se)
		})
	}
	require.NoError(t, s.Submit(ctx, "dup", "a@b", []string{"c@d"}, msg("x")))
	require.Error(t, s.Submit(ctx, "dup", "a@b", []string{"c@d"}, msg("x")))
	s.Close()
	require.ErrorIs(t, s.Submit(ctx, "late", "a@b", []string{"c@d"}, msg("x")), ErrClosed)
}

func TestAdmin(t *testing.T) {
	e := newEnv(t)
	e.opts.RetryMin, e.opts.RetryMax = time.Hour, time.Hour
	var mu sync.Mutex
	tries := map[string]int{}
	e.sink.setRcpt(func(to string) error {
		mu.Lock()
		tries[to]++
		mu.Unlock()
		return reply(450, [3]int{4, 2, 1}, "busy")
	})
	count := func(to string) int {
		mu.Lock()
		defer mu.Unlock()
		return tries[to]
	}
	s := e.open()
	run(t, s)
	ctx := context.Background()
	require.NoError(t, s.Submit(ctx, "a1", "alice@example.com", []string{"a@example.net"}, msg("a1")))
	waitFor(t, "a1 tried", func() bool { return s.Stats().Deferred == 1 })
	e.clock.advance(time.Second) // orders the arrivals
	require.NoError(t, s.Submit(ctx, "a2", "", []string{"b@example.net"}, msg("a2")))
	waitFor(t, "a2 tried", func() bool { return s.Stats().Deferred == 2 })

	l, err := List(e.dir)
	require.NoError(t, err)
	require.Len(t, l, 2)
	require.Equal(t, "a1", l[0].ID)
	require.Equal(t, "alice@example.com", l[0].From)
	require.Equal(t, []string{"a@example.net"}, l[0].To)
	require.Equal(t, 1, l[0].Attempts)
	require.Contains(t, l[0].LastError, "450 4.2.1 busy")
	require.Equal(t, "a2", l[1].ID)
	require.Equal(t, "", l[1].From)

	ent, data, err := Show(e.dir, "a2")
	require.NoError(t, err)
	require.Equal(t, msg("a2"), data)
	require.Equal(t, len(data), ent.Size)
	_, _, err = Show(e.dir, "nope")
	require.ErrorIs(t, err, ErrNotFound)
	require.ErrorIs(t, Retry(e.dir, "nope"), ErrNotFound)
	require.ErrorIs(t, Delete(e.dir, "nope"), ErrNotFound)

	// Retry one: the server notices the request and tries it again at once.
	require.NoError(t, Retry(e.dir, "a1"))
	waitFor(t, "a1 retried", func() bool { return count("a@example.net") == 2 })
	require.Equal(t, 1, count("b@example.net"))
	waitFor(t, "request consumed", func() bool {
		l, _ := List(e.dir)
		return len(l) == 2 && !l[0].RetryRequested && l[0].Attempts == 2
	})

	// Retry all.
	require.NoError(t, Retry(e.dir, ""))
	waitFor(t, "all retried", func() bool { return count("a@example.net") == 3 && count("b@example.net") == 2 })

	// Delete: gone from the directory at once, and from the server's memory.
	require.NoError(t, Delete(e.dir, "a2"))
	l, err = List(e.dir)
	require.NoError(t, err)
	require.Len(t, l, 1)
	waitFor(t, "forgotten", func() bool { return s.Stats().Depth == 1 })
	require.NoError(t, Retry(e.dir, ""))
	waitFor(t, "a1 retried again", func() bool { return count("a@example.net") == 4 })
	require.Equal(t, 2, count("b@example.net"), "a deleted message is not delivered")
	waitFor(t, "no orphan state", func() bool {
		_, err := os.Stat(statePath(e.dir, "a2"))
		return errors.Is(err, os.ErrNotExist)
	})
}

func TestConcurrentSubmit(t *testing.T) {
	e := newEnv(t)
	s := e.open()
	run(t, s)
	const clients, per = 20, 25
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			for i := range per {
				id := fmt.Sprintf("c%d-%d", c, i)
				require.NoError(t, s.Submit(context.Background(), id, "alice@example.com", []string{id + "@example.net"}, msg(id)))
			}
		})
	}
	wg.Wait()
	waitFor(t, "all delivered", func() bool { return s.Stats().Depth == 0 })
	got := e.sink.rcpts()
	require.Len(t, got, clients*per)
	for r, n := range got {
		require.Equal(t, 1, n, r)
	}
	require.Empty(t, files(t, e.dir))
}

func TestPermanent(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"5xx reply", &deliver.Error{Code: 550, Enhanced: [3]int{5, 1, 1}}, true},
		{"wrapped 5xx", fmt.Errorf("x: %w", &deliver.Error{Code: 554}), true},
		{"4xx reply", &deliver.Error{Code: 451}, false},
		{"fault", &deliver.Error{Err: errors.New("connection reset")}, false},
		{"net error", &net.OpError{Op: "dial", Err: errors.New("connection refused")}, false},
		{"plain error", errors.New("something"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, permanent(tc.err))
		})
	}
}

func TestMaxRecipientsMatchesConfig(t *testing.T) {
	require.Equal(t, config.MaxRecipientsLimit, MaxRecipients)
}
