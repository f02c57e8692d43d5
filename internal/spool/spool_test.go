package spool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"

	"relay/internal/config"
)

func TestRecovery(t *testing.T) {
	e := newEnv(t)
	// A first process spools a message and dies before delivering it, in the middle of
	// writing another one, and a message file is damaged.
	s1 := e.open()
	require.NoError(t, put(s1, context.Background(), "kept", "alice@example.com", []string{"bob@example.net"}, msg("kept")))
	s1.Close()
	require.NoError(t, os.WriteFile(filepath.Join(e.dir, tmpPrefix+"123"), []byte(magic+`{"from":"x"`), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(e.dir, "damaged.msg"), []byte(magic+`{"from":"x","to":["y"],"size":100}`+"\nshort"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(e.dir, "orphan.state"), []byte(`{}`), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(e.dir, segPrefix+"0000000000000001"+doneSuffix), []byte("x\n"), 0o600))

	s2 := e.open()
	require.Equal(t, []string{"damaged.bad"}, files(t, e.dir))
	require.Equal(t, 1, s2.Stats().Depth)
	require.Zero(t, e.deliver(s2))
	require.Zero(t, s2.Stats().Depth)
	require.Equal(t, map[string]int{"bob@example.net": 1}, sentTo(e.sink))
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
	require.Zero(t, e.deliver(s))
	require.Zero(t, s.Stats().Depth)
	require.Equal(t, map[string]int{"good@example.net": 1}, sentTo(e.sink))
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
				require.NoError(t, put(s1, context.Background(), id, "alice@example.com", []string{fmt.Sprintf("r%d@example.net", i)}, msg(id)))
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
			require.Zero(t, e.deliver(s2))
			require.Zero(t, s2.Stats().Depth)
			want := map[string]int{}
			for _, r := range tc.want {
				want[r+"@example.net"] = 1
			}
			require.Equal(t, want, sentTo(e.sink))
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
	for i := range 10 {
		id := fmt.Sprintf("m%d", i)
		require.NoError(t, put(s, context.Background(), id, "alice@example.com", []string{id + "@example.net"}, msg(id)))
	}
	require.Zero(t, e.deliver(s))
	require.Zero(t, s.Stats().Depth)
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
	require.NoError(t, put(s, context.Background(), "x", "alice@example.com", []string{"x@example.net"}, msg("x")))
	require.Zero(t, e.deliver(s))
	require.Zero(t, s.Stats().Depth)
	segs, _ = segFiles(t, e.dir)
	require.Len(t, segs, 2)
	require.True(t, old[inode(t, filepath.Join(e.dir, segs[1]))], "the new segment is a retired one written over, not a new file")
	require.Equal(t, 11, len(e.sink.Messages()))
}

// A message that waits for a retry moves out of its segment into a file of its own, so the
// segment can be retired; the state and the message survive a restart.
func TestDeferredMovesOut(t *testing.T) {
	e := newEnv(t)
	e.sink.OnRcpt(func(to string) error {
		if to == "later@example.net" {
			return reply(451, [3]int{4, 3, 0}, "later")
		}
		return nil
	})
	s := e.open()
	s.segMax = 1
	require.NoError(t, put(s, context.Background(), "wait", "alice@example.com", []string{"now@example.net", "later@example.net"}, msg("wait")))
	require.Equal(t, 1, e.deliver(s), "deferred")
	require.Equal(t, []string{"wait.msg", "wait.state"}, files(t, e.dir), "moved out")
	require.NoError(t, put(s, context.Background(), "next", "alice@example.com", []string{"now@example.net"}, msg("next")))
	require.Equal(t, 1, e.deliver(s), "next delivered; wait not due")
	require.Equal(t, 1, s.Stats().Depth)
	require.Equal(t, 1, s.Stats().Segments, "the first segment was retired")
	s.Close()

	e.sink.OnRcpt(nil)
	s2 := e.open()
	require.NoError(t, Retry(e.dir, "wait"))
	require.Zero(t, e.deliver(s2))
	require.Zero(t, s2.Stats().Depth)
	require.Equal(t, map[string]int{"now@example.net": 2, "later@example.net": 1}, sentTo(e.sink))
	require.Empty(t, files(t, e.dir))
}

// The admin commands see, show and delete a message that is still in its segment, from
// another process (here: without the server running).
func TestAdminSegment(t *testing.T) {
	e := newEnv(t)
	s := e.open()
	require.NoError(t, put(s, context.Background(), "s1", "alice@example.com", []string{"a@example.net"}, msg("s1")))
	require.NoError(t, put(s, context.Background(), "s2", "", []string{"b@example.net"}, msg("s2")))
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
	require.Zero(t, e.deliver(s2))
	require.Zero(t, s2.Stats().Depth)
	require.Equal(t, map[string]int{"a@example.net": 1}, sentTo(e.sink))
}

func TestCrashThenRestart(t *testing.T) {
	e := newEnv(t)
	s1 := e.open()
	for i := range 20 {
		require.NoError(t, put(s1, context.Background(), fmt.Sprintf("c%02d", i), "alice@example.com", []string{"bob@example.net"}, msg("c")))
	}
	s1.Close() // the process dies: nothing was delivered
	require.Empty(t, e.sink.Messages())

	s2 := e.open()
	require.Equal(t, 20, s2.Stats().Depth)
	require.Zero(t, e.deliver(s2))
	require.Zero(t, s2.Stats().Depth)
	require.Equal(t, map[string]int{"bob@example.net": 20}, sentTo(e.sink))
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

// A spool that cannot be written refuses new messages with 451 (and Writable says why), and
// takes them again once it is repaired; what it held is kept. (internal/queue's
// TestUnwritableSpool has the deliveries that go on meanwhile.)
func TestUnwritableSpool(t *testing.T) {
	e := newEnv(t)
	s := e.open()
	require.NoError(t, put(s, context.Background(), "before", "alice@example.com", []string{"bob@example.net"}, msg("before")))
	require.Zero(t, e.deliver(s))
	e.sink.Reject("held@example.net", &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "later"})
	require.NoError(t, put(s, context.Background(), "held", "alice@example.com", []string{"held@example.net"}, msg("held")))
	require.Equal(t, 1, e.deliver(s), "deferred")

	repair := breakDir(t, e.dir)
	err := put(s, context.Background(), "nope", "alice@example.com", []string{"bob@example.net"}, msg("nope"))
	require.Error(t, err)
	var r interface{ SMTPReply() (int, [3]int, string) }
	require.True(t, errors.As(err, &r))
	code, enh, _ := r.SMTPReply()
	require.Equal(t, 451, code)
	require.Equal(t, [3]int{4, 3, 0}, enh)
	require.Error(t, s.Writable())
	require.Equal(t, 1, s.Stats().Depth)

	repair()
	e.sink.OnRcpt(nil)
	require.NoError(t, s.Writable())
	require.NoError(t, put(s, context.Background(), "nope", "alice@example.com", []string{"bob@example.net"}, msg("nope")), "the id is free again")
	require.NoError(t, Retry(e.dir, "held"))
	require.Zero(t, e.deliver(s))
	require.Zero(t, s.Stats().Depth)
	require.Equal(t, map[string]int{"bob@example.net": 2, "held@example.net": 1}, sentTo(e.sink))
}

func TestOpenLocks(t *testing.T) {
	e := newEnv(t)
	s := e.open()
	_, _, err := Open(e.opts)
	require.ErrorContains(t, err, "in use by another relay process")
	require.NoError(t, s.Close())
	s2, _, err := Open(e.opts)
	require.NoError(t, err)
	s2.Close()
}

func TestPutErrors(t *testing.T) {
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
			_, err := s.Put(ctx, tc.id, "a@b", tc.to, msg("x"))
			var se *Error
			require.ErrorAs(t, err, &se)
		})
	}
	require.NoError(t, put(s, ctx, "dup", "a@b", []string{"c@d"}, msg("x")))
	require.Error(t, put(s, ctx, "dup", "a@b", []string{"c@d"}, msg("x")))
	s.Close()
	require.ErrorIs(t, put(s, ctx, "late", "a@b", []string{"c@d"}, msg("x")), ErrClosed)
}

func TestMaxRecipientsMatchesConfig(t *testing.T) {
	require.Equal(t, config.MaxRecipientsLimit, MaxRecipients)
}

// The requests of `relay queue` reach the server through Requests: a deletion is the
// spool's to carry out (the message is forgotten and Deleted, its files gone), retries are
// handed on; every request file is consumed.
func TestRequests(t *testing.T) {
	e := newEnv(t)
	s := e.open()
	ctx := context.Background()
	a1, err := s.Put(ctx, "a1", "alice@example.com", []string{"a@example.net"}, msg("a1"))
	require.NoError(t, err)
	s2, err := s.Put(ctx, "s2", "alice@example.com", []string{"b@example.net"}, msg("s2"))
	require.NoError(t, err)
	require.NoError(t, Retry(e.dir, "a1"))
	require.NoError(t, Retry(e.dir, ""))
	require.NoError(t, Delete(e.dir, "s2"))
	require.NoError(t, os.WriteFile(filepath.Join(e.dir, ctlDir, "unknown"), nil, 0o600))

	var got []Request
	s.Requests(func(r Request) { got = append(got, r) })
	require.ElementsMatch(t, []Request{{Op: OpRetryAll}, {Op: OpRetry, ID: "a1"}, {Op: OpDelete, ID: "s2"}}, got)
	require.True(t, s2.Deleted())
	require.False(t, a1.Deleted())
	require.Equal(t, 1, s.Stats().Depth)
	ents, err := os.ReadDir(filepath.Join(e.dir, ctlDir))
	require.NoError(t, err)
	require.Empty(t, ents, "requests consumed")

	require.Zero(t, e.deliver(s))
	require.Equal(t, map[string]int{"a@example.net": 1}, sentTo(e.sink))
}

// An attempt that ends after its message was deleted writes no state for it: there is no
// message file left to keep one for, and nothing is left in the directory.
func TestDeferAfterDelete(t *testing.T) {
	e := newEnv(t)
	s := e.open()
	m, err := s.Put(context.Background(), "d1", "alice@example.com", []string{"a@example.net"}, msg("d1"))
	require.NoError(t, err)
	data, err := s.Read(m)
	require.NoError(t, err)
	require.NoError(t, Delete(e.dir, "d1"))
	s.Requests(func(Request) {})
	require.True(t, m.Deleted())
	require.Error(t, s.Defer(m, State{Attempts: 1}, data), "no message file to keep a state for")
	require.Empty(t, files(t, e.dir))
	require.Zero(t, s.Stats().Depth)
}
