package spool

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Accepted messages are appended to a segment file, a log, rather than written to a file
// each: a batch of concurrent submissions costs one pwritev and one fdatasync, where a file
// per message cost an inode, two renames and a share of a directory sync, which profiles
// under load showed at about a quarter of the relay's CPU. The log is for the common case,
// a message delivered at its first attempt; one that has to wait for a retry moves to a
// file of its own (ID.msg, see file.go), so that a long wait never pins a segment.
//
//	seg-SEGID.log   records: a header line (segMagic, then the envelope as JSON with the
//	                segment id, the message id and the CRC-32C of the message, then a
//	                space and the CRC-32C of the line so far in 8 hex digits), then the
//	                message; appended only by the running server
//	seg-SEGID.done  ids of the segment's messages that are done (delivered, bounced, moved
//	                to a file of their own, or deleted), one per line
//	.tmp-spare-*    a retired segment kept to be written over by the next one
//
// A record is acknowledged (Put returns) once its batch's fdatasync is done; records
// that follow an acknowledged one are only ever later batches. After a crash the segment
// is read up to its end: a record whose header does not parse or fails its own checksum,
// names another segment (the old content of a recycled file) or whose message fails its
// checksum is skipped, and reading resumes at the next header that is valid.
//
// Done records are written without a sync: losing one in a power failure can only deliver
// a message twice (at-least-once), never lose one. A segment whose every message is done
// and that no longer takes new records is retired: the log is kept as a spare, or removed
// when enough are kept, and then, the directory synced, its done file is removed. Writing
// over a spare's allocated blocks costs its fdatasync no block allocation: half the CPU of
// appending to a new file here.
const (
	segPrefix  = "seg-"
	segSuffix  = ".log"
	doneSuffix = ".done"
	sparePfx   = tmpPrefix + "spare-"
	segMagic   = "RELAY-SEG-2 "
	// segMagicV1 began the records of the format without a header checksum. They are not
	// read: Open and the admin commands refuse a spool that has such a segment rather
	// than drop its messages (see scanSegments).
	segMagicV1 = "RELAY-SEG-1 "

	// defaultSegMax is where a segment stops taking records (the last may end past it).
	defaultSegMax = 16 << 20
	// maxSpares retired segments are kept for reuse.
	maxSpares = 2
	// maxBatch bounds the records of one pwritev (IOV_MAX is 1024 buffers, two each).
	maxBatch = 256
)

// segment is one log file. live and current are guarded by Spool.mu.
type segment struct {
	id   string // 16 hex digits, in every record's header too
	path string
	f    *os.File // read and written with ReadAt and pwritev
	done *os.File // the done file, O_APPEND
	// live counts the messages of this segment still in memory (not done).
	live int
	// current: the writer appends to it; it is not retired even with live == 0.
	current bool
}

// markDone records that id is done. It is best effort: a lost line means a repeated
// delivery after a crash.
func (g *segment) markDone(id string) {
	g.done.Write([]byte(id + "\n"))
}

func (g *segment) close() {
	g.f.Close()
	g.done.Close()
}

func segPath(dir, id string) string  { return filepath.Join(dir, segPrefix+id+segSuffix) }
func donePath(dir, id string) string { return filepath.Join(dir, segPrefix+id+doneSuffix) }

// segIDOf returns the segment id of a log file name, or "".
func segIDOf(name string) string {
	id, ok := strings.CutPrefix(name, segPrefix)
	if !ok {
		return ""
	}
	id, ok = strings.CutSuffix(id, segSuffix)
	if !ok || len(id) != 16 {
		return ""
	}
	if _, err := strconv.ParseUint(id, 16, 64); err != nil {
		return ""
	}
	return id
}

// record is one submission on its way into the log.
type record struct {
	id   string
	hdr  []byte
	data []byte
	// Set by the writer:
	seg  *segment
	off  int64 // of the message in seg
	done bool
	err  error
}

// logWriter is the group commit: a submitter queues its record; if no batch is being
// written it becomes the leader, takes the whole queue and writes and syncs it; the others
// wait for the batch that holds their record. Submitters that arrive during a sync form the
// next batch, so the syncs per second adapt to the disk and the batches to the load.
type logWriter struct {
	mu    sync.Mutex
	cond  sync.Cond
	queue []*record
	busy  bool
	// Used only by the leader (busy):
	seg    *segment
	off    int64
	lastID uint64
	closed bool
	// batches and records count for Stats: records/batches is the group-commit factor.
	batches, records int64
	// lastArrival and gap (a moving average of the time between submissions) size the
	// commit delay.
	lastArrival time.Time
	gap         time.Duration
	lastBatch   int           // records in the last batch
	delayMax    time.Duration // maxCommitDelay; 0 in some tests
	maxRecords  int           // maxBatch; 1 in a benchmark
}

// maxCommitDelay bounds how long a leader waits for more records before it writes (the
// commit_delay of databases). An fdatasync costs about as much CPU for five records as
// for one, and under load submissions come every few hundred microseconds, so waiting
// about two of those gaps before syncing saves CPU for a millisecond or two of latency.
// Nobody waits when submissions are rarer than this, or when they come one at a time (a
// single client sending in a loop: its next message waits for this one's reply).
const maxCommitDelay = 2 * time.Millisecond

// delay is how long the leader waits for more records. w.mu is held.
func (w *logWriter) delay() time.Duration {
	if w.gap <= 0 || w.gap >= w.delayMax || (w.lastBatch <= 1 && len(w.queue) <= 1) {
		return 0
	}
	return min(w.delayMax, 2*w.gap)
}

// appendLog makes r durable in the current segment.
func (s *Spool) appendLog(r *record) error {
	w := &s.w
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.lastArrival.IsZero() {
		g := min(now.Sub(w.lastArrival), time.Second)
		w.gap += (g - w.gap) / 8
	}
	w.lastArrival = now
	w.queue = append(w.queue, r)
	for !r.done {
		if w.busy {
			w.cond.Wait()
			continue
		}
		if w.closed {
			for _, q := range w.queue {
				q.done, q.err = true, ErrClosed
			}
			w.queue = nil
			break
		}
		w.busy = true
		if d := w.delay(); d > 0 && len(w.queue) < maxBatch {
			w.mu.Unlock()
			time.Sleep(d)
			w.mu.Lock()
		}
		n := min(len(w.queue), w.maxRecords)
		batch := slices.Clone(w.queue[:n])
		w.queue = slices.Delete(w.queue, 0, n)
		w.mu.Unlock()
		err := s.writeBatch(batch)
		w.mu.Lock()
		w.busy = false
		w.lastBatch = len(batch)
		w.batches++
		w.records += int64(len(batch))
		for _, q := range batch {
			q.done, q.err = true, err
		}
		w.cond.Broadcast()
	}
	return r.err
}

// writeBatch writes and syncs batch at the end of the current segment. Only the leader
// calls it.
func (s *Spool) writeBatch(batch []*record) error {
	w := &s.w
	if err := s.checkDir(); err != nil {
		return err
	}
	if w.seg == nil || w.off >= s.segMax {
		if err := s.rotate(); err != nil {
			return err
		}
	}
	seg := w.seg
	bufs := make([][]byte, 0, 2*len(batch))
	off := w.off
	for _, r := range batch {
		sealRecordHeader(r.hdr, seg.id)
		r.seg = seg
		r.off = off + int64(len(r.hdr))
		off += int64(len(r.hdr) + len(r.data))
		bufs = append(bufs, r.hdr, r.data)
	}
	err := pwritev(seg.f, bufs, w.off)
	if err == nil {
		err = fdatasync(seg.f)
	}
	if err != nil {
		// The segment may end in part of a record now, and after a failed sync the kernel
		// may have dropped the batch's pages: the next batch starts a new segment. The
		// records may still be readable after a restart; they were refused, so they are
		// marked done.
		for _, r := range batch {
			seg.markDone(r.id)
		}
		s.endSegment()
		return fmt.Errorf("segment %s: %w", seg.id, err)
	}
	w.off = off
	s.mu.Lock()
	seg.live += len(batch)
	s.mu.Unlock()
	return nil
}

// checkDir refuses to write when the spool directory is gone from its path, replaced or
// unwritable: the open segment would still take writes, into a file that the next start
// would not find (or could not replace), so the client is told 451 instead, as it would be
// with a file per message.
func (s *Spool) checkDir() error {
	var st unix.Stat_t
	if err := unix.Stat(s.o.Dir, &st); err != nil {
		return &os.PathError{Op: "stat", Path: s.o.Dir, Err: err}
	}
	if st.Dev != s.dirDev || st.Ino != s.dirIno {
		return fmt.Errorf("%s: not the spool directory the relay started with (moved or replaced; put it back, or restart the relay to use the new one)", s.o.Dir)
	}
	if err := unix.Access(s.o.Dir, unix.W_OK|unix.X_OK); err != nil {
		return &os.PathError{Op: "access", Path: s.o.Dir, Err: err}
	}
	return nil
}

// rotate starts a new current segment, in a spare when there is one. Only the leader calls
// it.
func (s *Spool) rotate() error {
	w := &s.w
	s.endSegment()
	w.lastID = max(w.lastID+1, uint64(time.Now().UnixNano()))
	id := fmt.Sprintf("%016x", w.lastID)
	path := segPath(s.o.Dir, id)
	s.mu.Lock()
	var spare string
	if n := len(s.spares); n > 0 {
		spare = s.spares[n-1]
		s.spares = s.spares[:n-1]
	}
	s.mu.Unlock()
	var f *os.File
	var err error
	if spare != "" {
		if err = os.Rename(spare, path); err == nil {
			f, err = os.OpenFile(path, os.O_RDWR, 0)
		} else {
			os.Remove(spare)
		}
	}
	if f == nil {
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	}
	if err != nil {
		return fmt.Errorf("new segment: %w", err)
	}
	done, err := os.OpenFile(donePath(s.o.Dir, id), os.O_WRONLY|os.O_CREATE|os.O_APPEND|os.O_TRUNC, 0o600)
	if err == nil {
		// The segment's name must be durable before a record in it is acknowledged.
		err = s.dir.Sync()
	}
	if err != nil {
		f.Close()
		if done != nil {
			done.Close()
		}
		os.Remove(path)
		os.Remove(donePath(s.o.Dir, id))
		return fmt.Errorf("new segment: %w", err)
	}
	seg := &segment{id: id, path: path, f: f, done: done, current: true}
	s.mu.Lock()
	s.segs[id] = seg
	s.mu.Unlock()
	w.seg, w.off = seg, 0
	return nil
}

// endSegment makes the current segment take no more records, and retires it when it has
// no live message.
func (s *Spool) endSegment() {
	w := &s.w
	seg := w.seg
	if seg == nil {
		return
	}
	w.seg, w.off = nil, 0
	s.mu.Lock()
	seg.current = false
	retire := seg.live == 0
	s.mu.Unlock()
	if retire {
		s.retire(seg)
	}
}

// release takes m out of its segment (done, moved to a file, or deleted), retiring the
// segment with its last message.
func (s *Spool) release(m *Message, markDone bool) {
	s.mu.Lock()
	seg := m.seg
	s.mu.Unlock()
	if seg == nil {
		return
	}
	if markDone {
		// Before the count goes down: the segment cannot be retired under the write.
		seg.markDone(m.ID)
	}
	s.mu.Lock()
	if m.seg != seg {
		s.mu.Unlock()
		return
	}
	m.seg = nil
	retire := s.unlinkLocked(seg)
	s.mu.Unlock()
	if retire {
		s.retire(seg)
	}
}

// unlinkLocked counts one message out of seg and reports whether seg is to be retired.
// s.mu is held.
func (s *Spool) unlinkLocked(seg *segment) bool {
	seg.live--
	return seg.live == 0 && !seg.current
}

// retire removes a segment whose messages are all done, keeping its log as a spare. The
// log goes first and the directory is synced before the done file goes: a crash (a power
// failure too) can leave a done file without its log, which Open removes, never the log
// without its done file, which would deliver every message of the segment again.
func (s *Spool) retire(seg *segment) {
	var size int64
	if fi, err := seg.f.Stat(); err == nil {
		size = fi.Size()
	}
	seg.close()
	s.mu.Lock()
	delete(s.segs, seg.id)
	// A segment that a batch of large messages made much longer than usual is not kept:
	// Open and the admin commands read segments whole.
	keep := len(s.spares) < maxSpares && !s.closed && size <= 2*defaultSegMax
	s.mu.Unlock()
	moved := false
	if keep {
		spare := filepath.Join(s.o.Dir, sparePfx+seg.id)
		if err := os.Rename(seg.path, spare); err == nil {
			moved = true
			s.mu.Lock()
			s.spares = append(s.spares, spare)
			s.mu.Unlock()
		}
	}
	if !moved {
		if err := os.Remove(seg.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Error("spool: remove segment", "segment", seg.id, "err", err)
			return // and the done file stays with it
		}
	}
	// Unsynced, the two removals may reach the disk in either order. One fsync per
	// retired segment (16 MiB of messages).
	if err := s.syncDir(); err != nil {
		s.log.Error("spool: sync directory; done file of a retired segment kept for the next start", "segment", seg.id, "err", err)
		return
	}
	os.Remove(donePath(s.o.Dir, seg.id))
}

// readChecked reads size octets at off in the log of segment segID and checks their CRC.
func readChecked(f *os.File, segID string, off int64, size int, crc uint32) ([]byte, error) {
	b := make([]byte, size)
	if _, err := f.ReadAt(b, off); err != nil {
		return nil, fmt.Errorf("segment %s: %w", segID, err)
	}
	if checksum(b) != crc {
		return nil, fmt.Errorf("segment %s at %d: checksum mismatch", segID, off)
	}
	return b, nil
}

// segIDPos is where the segment id is in a record header: the header is encoded before
// the writer knows the segment, with zeros there.
var segIDPos = len(segMagic) + len(`{"seg":"`)

const noSeg = "0000000000000000"

// hdrSumLen is the header's own checksum at the end of its line: a space and the CRC-32C of
// the line before it (magic, segment id and envelope) in 8 lowercase hex digits. The
// message's CRC in the envelope says nothing about the envelope itself: without this, a
// flipped bit in a recipient or the sender delivered the message to someone else, and one
// in "size" could swallow the next record.
const hdrSumLen = 1 + 8

// encodeRecordHeader returns the header line of a record, for no segment yet, and refuses
// an envelope that parseRecord would refuse (an *Error's refusal: too many recipients, or
// a line over maxEnvelopeLine): it is checked before anything is written, so that nothing
// acknowledged is dropped at the next start.
func encodeRecordHeader(env envelope) ([]byte, error) {
	if err := checkEnvelope(env); err != nil {
		return nil, err
	}
	env.Seg = noSeg
	line := make([]byte, 0, 256)
	line = append(line, segMagic...)
	line, err := appendEnvelopeJSON(line, env)
	if err != nil {
		return nil, err
	}
	line = append(line, " 00000000\n"...)
	if len(line) > maxEnvelopeLine {
		return nil, fmt.Errorf("%w: a record header of %d octets, the limit is %d", ErrEnvelopeTooLarge, len(line), maxEnvelopeLine)
	}
	return line, nil
}

// sealRecordHeader writes the segment id and then the header's checksum into hdr, a line
// from encodeRecordHeader.
func sealRecordHeader(hdr []byte, segID string) {
	copy(hdr[segIDPos:segIDPos+len(noSeg)], segID)
	end := len(hdr) - 1 // the line end
	putHeaderSum(hdr[end-8:end], hdr[:end-hdrSumLen])
}

// putHeaderSum writes the checksum of line into dst (8 octets), in lowercase hex: the
// reader compares octets, so an upper-case digit is damage too.
func putHeaderSum(dst, line []byte) {
	const digits = "0123456789abcdef"
	c := checksum(line)
	for i := 7; i >= 0; i-- {
		dst[i] = digits[c&0xf]
		c >>= 4
	}
}

// segRecord is a record found in a segment.
type segRecord struct {
	env  envelope
	off  int    // of the message
	next int    // of the next record
	data []byte // the message, within the segment's bytes
}

// parseRecord parses the record at the start of b, which belongs to segment segID. The
// header's own checksum is checked before its JSON is looked at.
func parseRecord(b []byte, segID string) (segRecord, error) {
	i := bytes.IndexByte(b[:min(len(b), maxEnvelopeLine)], '\n')
	if i < 0 {
		return segRecord{}, errTruncated
	}
	line := b[:i]
	if !bytes.HasPrefix(line, []byte(segMagic)) || len(line) < len(segMagic)+hdrSumLen {
		return segRecord{}, errors.New("not a record header")
	}
	var sum [8]byte
	putHeaderSum(sum[:], line[:i-hdrSumLen])
	if line[i-hdrSumLen] != ' ' || !bytes.Equal(line[i-8:], sum[:]) {
		return segRecord{}, errors.New("record header checksum mismatch")
	}
	var env envelope
	if err := json.Unmarshal(line[len(segMagic):i-hdrSumLen], &env); err != nil {
		return segRecord{}, fmt.Errorf("record header: %w", err)
	}
	if err := checkEnvelope(env); err != nil {
		return segRecord{}, fmt.Errorf("record header: %w", err)
	}
	switch {
	case env.Seg != segID:
		return segRecord{}, fmt.Errorf("a record of segment %q", env.Seg)
	case validID(env.ID) != nil:
		return segRecord{}, fmt.Errorf("record id %q", env.ID)
	case env.Size > len(b)-i-1:
		return segRecord{}, errors.New("record longer than the segment")
	}
	data := b[i+1 : i+1+env.Size]
	if checksum(data) != env.CRC {
		return segRecord{}, errors.New("checksum mismatch")
	}
	return segRecord{env: env, off: i + 1, next: i + 1 + env.Size, data: data}, nil
}

// parseSegment returns the valid records of the segment content b. damaged counts the
// octets skipped between valid records: damage, which a crash does not cause (the torn
// or stale end of a segment is after its last valid record and is not counted).
//
// Resynchronising looks for the start of a header of this segment, not for any header: the
// old content of a recycled segment, and message bodies, may hold any number of other
// headers (a body may quote spool records on purpose), and each would cost a look for its
// line end.
func parseSegment(b []byte, segID string) (recs []segRecord, damaged int) {
	start := []byte(segMagic + `{"seg":"` + segID + `"`)
	pos, gap := 0, 0
	for pos < len(b) {
		r, err := parseRecord(b[pos:], segID)
		if err == nil {
			damaged += gap
			gap = 0
			r.off += pos
			r.next += pos
			recs = append(recs, r)
			pos = r.next
			continue
		}
		i := bytes.Index(b[pos+1:], start)
		if i < 0 {
			break
		}
		gap += i + 1
		pos += i + 1
	}
	return recs, damaged
}

// readDone reads a segment's done file: the ids it lists. Lines that are not ids (torn by
// a crash, or zeros where a power failure left blocks unwritten) are skipped: a lost done
// record repeats a delivery, and refusing to start would stop them all.
func readDone(dir, segID string) (map[string]bool, error) {
	done := map[string]bool{}
	b, err := os.ReadFile(donePath(dir, segID))
	if errors.Is(err, os.ErrNotExist) {
		return done, nil
	}
	if err != nil {
		return nil, err
	}
	// Only whole lines: what follows the last line end is a write cut short, which may be
	// the start of another id ("m1" of "m12"), and taking it would drop a message.
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[:i]
	} else {
		b = nil
	}
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		if validID(string(line)) == nil {
			done[string(line)] = true
		}
	}
	return done, nil
}

// segMessage is a message of a segment, as read from the directory.
type segMessage struct {
	segID string
	rec   segRecord
}

// scanSegments reads every segment in dir, one at a time: the messages that are not done,
// by id (their records without data: readRecordData reads it), and the segment ids in
// order. The admin commands and Open use it.
func scanSegments(dir string, names []string, log func(segID string, damaged int)) (map[string]segMessage, []string, error) {
	var ids []string
	for _, n := range names {
		if id := segIDOf(n); id != "" {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	msgs := map[string]segMessage{}
	for _, id := range ids {
		done, err := readDone(dir, id)
		if err != nil {
			return nil, nil, err
		}
		b, err := os.ReadFile(segPath(dir, id))
		if errors.Is(err, os.ErrNotExist) {
			continue // retired meanwhile
		}
		if err != nil {
			return nil, nil, err
		}
		if bytes.HasPrefix(b, []byte(segMagicV1)) {
			// Not read, and not to be dropped as damage either: its messages were
			// acknowledged by an earlier build.
			return nil, nil, fmt.Errorf("%s: a segment of an earlier spool format (%q, without header checksums): deliver it with the relay that wrote it, or move it away", segPath(dir, id), strings.TrimSpace(segMagicV1))
		}
		recs, damaged := parseSegment(b, id)
		if damaged > 0 && log != nil {
			log(id, damaged)
		}
		for _, r := range recs {
			if !done[r.env.ID] {
				r.data = nil // the segment's bytes are not kept: a backlog can be large
				msgs[r.env.ID] = segMessage{segID: id, rec: r}
			}
		}
	}
	return msgs, ids, nil
}

// readRecordData reads the message of a record found by scanSegments, from another
// process than the server (`relay queue show`).
func readRecordData(dir string, sm segMessage) ([]byte, error) {
	f, err := os.Open(segPath(dir, sm.segID))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readChecked(f, sm.segID, int64(sm.rec.off), sm.rec.env.Size, sm.rec.env.CRC)
}

// pwritev writes bufs at off, all of them.
func pwritev(f *os.File, bufs [][]byte, off int64) error {
	fd := int(f.Fd())
	for len(bufs) > 0 {
		n, err := unix.Pwritev(fd, bufs, off)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return &os.PathError{Op: "pwritev", Path: f.Name(), Err: err}
		}
		if n == 0 {
			return &os.PathError{Op: "pwritev", Path: f.Name(), Err: io.ErrShortWrite}
		}
		off += int64(n)
		for n > 0 && len(bufs) > 0 {
			if n >= len(bufs[0]) {
				n -= len(bufs[0])
				bufs = bufs[1:]
			} else {
				bufs[0] = bufs[0][n:]
				n = 0
			}
		}
		for len(bufs) > 0 && len(bufs[0]) == 0 {
			bufs = bufs[1:]
		}
	}
	return nil
}

func fdatasync(f *os.File) error {
	for {
		err := unix.Fdatasync(int(f.Fd()))
		if err != syscall.EINTR {
			if err != nil {
				return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: err}
			}
			return nil
		}
	}
}
