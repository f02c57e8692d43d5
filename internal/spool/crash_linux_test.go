package spool

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// dirOp is one change to a directory, as inotify reports it: a file removed, renamed,
// created or written (Name, and To for a rename).
type dirOp struct {
	Kind     string // "remove", "rename", "create", "write"
	Name, To string
}

func (o dirOp) String() string {
	if o.Kind == "rename" {
		return fmt.Sprintf("rename %s %s", o.Name, o.To)
	}
	return o.Kind + " " + o.Name
}

// watchDir records the changes made to the files of dir, in order, until the returned
// function is called.
func watchDir(t *testing.T, dir string) (stop func() []dirOp) {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	require.NoError(t, err)
	_, err = unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_DELETE|unix.IN_MOVED_FROM|unix.IN_MOVED_TO|unix.IN_MODIFY)
	require.NoError(t, err)
	return func() []dirOp {
		defer unix.Close(fd)
		var raw []byte
		buf := make([]byte, 64<<10)
		for {
			n, err := unix.Read(fd, buf)
			if errors.Is(err, unix.EAGAIN) {
				break
			}
			require.NoError(t, err)
			raw = append(raw, buf[:n]...)
		}
		var ops []dirOp
		from := map[uint32]int{} // rename cookie -> index in ops
		for len(raw) > 0 {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&raw[0]))
			name := string(bytes.TrimRight(raw[unix.SizeofInotifyEvent:unix.SizeofInotifyEvent+ev.Len], "\x00"))
			raw = raw[unix.SizeofInotifyEvent+ev.Len:]
			require.Zero(t, ev.Mask&unix.IN_Q_OVERFLOW, "inotify queue overflow")
			switch {
			case ev.Mask&unix.IN_DELETE != 0:
				ops = append(ops, dirOp{Kind: "remove", Name: name})
			case ev.Mask&unix.IN_CREATE != 0:
				ops = append(ops, dirOp{Kind: "create", Name: name})
			case ev.Mask&unix.IN_MODIFY != 0:
				ops = append(ops, dirOp{Kind: "write", Name: name})
			case ev.Mask&unix.IN_MOVED_FROM != 0:
				from[ev.Cookie] = len(ops)
				ops = append(ops, dirOp{Kind: "rename", Name: name})
			case ev.Mask&unix.IN_MOVED_TO != 0:
				i, ok := from[ev.Cookie]
				require.True(t, ok, "a rename into the directory")
				ops[i].To = name
			}
		}
		return ops
	}
}

// readDir returns the files of dir and their content (not ctl/).
func readDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	files := map[string][]byte{}
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		require.NoError(t, err)
		files[e.Name()] = b
	}
	return files
}

// afterCrash returns the files of a directory that held before and went through ops[:k]
// (a process killed after its k-th change), given what it held after all of them. A write
// is an append (done files), so a file written once holds either its old content or its
// final one; a file written more often than once cannot be replayed.
func afterCrash(t *testing.T, before, after map[string][]byte, ops []dirOp, k int) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	for n, b := range before {
		files[n] = b
	}
	writes := map[string]int{}
	for _, op := range ops {
		if op.Kind == "write" {
			writes[op.Name]++
			require.Equal(t, 1, writes[op.Name], "%s written twice: the crash points between cannot be replayed", op.Name)
		}
	}
	for _, op := range ops[:k] {
		switch op.Kind {
		case "remove":
			delete(files, op.Name)
		case "rename":
			files[op.To] = files[op.Name]
			delete(files, op.Name)
		case "create":
			files[op.Name] = nil
		case "write":
			require.Contains(t, after, op.Name, "written, then removed")
			files[op.Name] = after[op.Name]
		}
	}
	return files
}

// writeSegment writes a segment log with a record per message id (recipient ID@example.net)
// and its done file listing done.
func writeSegment(t *testing.T, dir, segID string, ids []string, done ...string) {
	t.Helper()
	var b []byte
	for _, id := range ids {
		data := msg(id)
		h, err := encodeRecordHeader(envelope{ID: id, From: "alice@example.com", To: rawStrings{id + "@example.net"}, Received: time.Now(), Size: len(data), CRC: checksum(data)})
		require.NoError(t, err)
		sealRecordHeader(h, segID)
		b = append(append(b, h...), data...)
	}
	require.NoError(t, os.WriteFile(segPath(dir, segID), b, 0o600))
	var d []byte
	for _, id := range done {
		d = append(d, id+"\n"...)
	}
	require.NoError(t, os.WriteFile(donePath(dir, segID), d, 0o600))
}

func writeMessageFile(t *testing.T, dir, id string) {
	t.Helper()
	data := msg(id)
	line, err := encodeEnvelope(envelope{From: "alice@example.com", To: rawStrings{id + "@example.net"}, Received: time.Now(), Size: len(data), CRC: checksum(data)})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(msgPath(dir, id), append(line, data...), 0o600))
}

func writeState(t *testing.T, dir, id string, st state) {
	t.Helper()
	b, err := json.Marshal(st)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(statePath(dir, id), b, 0o600))
}

// Recovery's clean-up is crash-safe: whatever point of it a crash interrupts, the next start
// delivers every message that was not done, once, and none that was. The directory holds
// what a crash of the running server leaves (a spare with its done file, a done file whose
// log retire removed, temp files) and what recovery cleans up: a segment whose messages
// are all done, messages whose state says every recipient is done (one still in a segment,
// one in a file of its own whose record was not marked done), a message moved out of a
// segment that stays, a damaged file, an orphan state. The changes recovery makes to it are
// recorded (inotify), and the start after a crash at each of them is checked on real files.
//
// Before, recovery removed a dead segment's done file before its log (a crash between left
// the log alone: its messages were delivered again), and removed the state of a finished
// message without marking its record done (delivered again at every later start).
func TestRecoveryCrashDuringCleanup(t *testing.T) {
	const segA, segB = "00000000000000a0", "00000000000000b0"
	build := func(dir string) {
		writeSegment(t, dir, segA, []string{"a0", "a1"}, "a0", "a1") // all done: removed
		writeSegment(t, dir, segB, []string{"b0", "b1", "f1", "g1", "h1"}, "b0")
		writeMessageFile(t, dir, "f1") // moved out, then delivered; the done record lost
		writeState(t, dir, "f1", state{Attempts: 1, Delivered: rawStrings{"f1@example.net"}})
		writeState(t, dir, "g1", state{Attempts: 1, Delivered: rawStrings{"g1@example.net"}})
		writeMessageFile(t, dir, "h1") // moved out, pending; the done record lost
		// retire crashed after it removed the log (or made it a spare):
		require.NoError(t, os.WriteFile(donePath(dir, "00000000000000c0"), []byte("c0\n"), 0o600))
		writeSegment(t, dir, "00000000000000d0", []string{"d0"}, "d0")
		require.NoError(t, os.Rename(segPath(dir, "00000000000000d0"), filepath.Join(dir, sparePfx+"00000000000000d0")))
		require.NoError(t, os.WriteFile(filepath.Join(dir, tmpPrefix+"123"), []byte(magic+`{"from":"x"`), 0o600))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "bad1.msg"), []byte(magic+"{\n"), 0o600))
		writeState(t, dir, "o1", state{Attempts: 1})
		require.NoError(t, os.Mkdir(filepath.Join(dir, ctlDir), 0o700))
	}
	pending := map[string]int{"b1@example.net": 1, "h1@example.net": 1}

	// The recovery, recorded.
	e := newEnv(t)
	build(e.dir)
	before := readDir(t, e.dir)
	stop := watchDir(t, e.dir)
	s, _, err := Open(e.opts)
	require.NoError(t, err)
	require.Equal(t, len(pending), s.Stats().Depth)
	s.Close()
	ops := stop()
	after := readDir(t, e.dir)
	require.NotEmpty(t, ops)
	t.Logf("recovery: %v", ops)

	for k := range len(ops) + 1 {
		name := "no change"
		if k > 0 {
			name = "after " + ops[k-1].String()
		}
		t.Run(fmt.Sprintf("%02d %s", k, name), func(t *testing.T) {
			e := newEnv(t)
			for n, b := range afterCrash(t, before, after, ops, k) {
				require.NoError(t, os.WriteFile(filepath.Join(e.dir, n), b, 0o600))
			}
			require.NoError(t, os.MkdirAll(filepath.Join(e.dir, ctlDir), 0o700))
			s := e.open()
			require.Zero(t, e.deliver(s))
			require.Zero(t, s.Stats().Depth)
			s.Close()
			require.Equal(t, pending, sentTo(e.sink), "crash %s of %v", name, ops)
			// And a later start has nothing left to deliver.
			s2 := e.open()
			require.Zero(t, s2.Stats().Depth)
			segs, _ := segFiles(t, e.dir)
			require.False(t, slices.ContainsFunc(segs, func(n string) bool { return n == segPrefix+segA+segSuffix }))
		})
	}
}
