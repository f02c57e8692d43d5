package spool

import (
	"bytes"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The leader waits for more records only under concurrent load: submissions closer than
// the bound, and more than one at a time.
func TestCommitDelay(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		name      string
		gap       time.Duration
		lastBatch int
		queued    int
		want      time.Duration
	}{
		{"first submission", 0, 0, 1, 0},
		{"one client in a loop", 500 * time.Microsecond, 1, 1, 0},
		{"rare submissions", 5 * ms, 4, 3, 0},
		{"concurrent, last batch shared", 300 * time.Microsecond, 3, 1, 600 * time.Microsecond},
		{"concurrent, several waiting now", 300 * time.Microsecond, 1, 2, 600 * time.Microsecond},
		{"bounded", 1900 * time.Microsecond, 2, 1, maxCommitDelay},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := logWriter{gap: tc.gap, lastBatch: tc.lastBatch, queue: make([]*record, tc.queued), delayMax: maxCommitDelay}
			require.Equal(t, tc.want, w.delay())
		})
	}
}

// FuzzParseSegment: whatever a segment holds, reading it never panics and every record it
// returns is whole and in place; a record of any envelope the writer takes comes back as
// it went in, whatever junk surrounds it (and so does the same envelope in a message file,
// where a deferred message moves); and its header with any one octet changed is refused.
func FuzzParseSegment(f *testing.F) {
	const id = "00000000000000ab"
	rec := func(mid string, data string) []byte {
		h, err := encodeRecordHeader(envelope{ID: mid, From: "a@b", To: rawStrings{"c@d"}, Received: time.Unix(1, 0).UTC(), Size: len(data), CRC: checksum([]byte(data))})
		if err != nil {
			f.Fatal(err)
		}
		sealRecordHeader(h, id)
		return append(h, data...)
	}
	two := append(rec("m1", "hello\r\n"), rec("m2", segMagic+"{}\r\n")...)
	f.Add(two, []byte(""), "alice@example.com", "bob@example.net\ncarol@example.org", []byte("Subject: x\r\n\r\nbody\r\n"), uint(0))
	f.Add([]byte("junk"), []byte(segMagic+`{"seg":"`+id+`"`), "", "a\"b\\c@d", []byte(""), uint(77))
	f.Add([]byte{}, two[:40], "ü@ö.de", "\x00\r\n", two, uint(1<<20))
	f.Add(two[:len(two)-3], two[5:], "\xff", "", []byte("\n"), uint(12345))
	f.Fuzz(func(t *testing.T, pre, post []byte, from, to string, data []byte, flip uint) {
		env := envelope{ID: "m3", From: rawString(from), To: strings.Split(to, "\n"), Received: time.Unix(1700000000, 5).UTC(), Size: len(data), CRC: checksum(data)}
		hdr, err := encodeRecordHeader(env)
		if err != nil {
			// Submit refuses it before writing, with a reply.
			var r interface{ SMTPReply() (int, [3]int, string) }
			require.ErrorAs(t, err, &r)
			return
		}
		sealRecordHeader(hdr, id)
		one := append(slices.Clone(hdr), data...)
		b := slices.Concat(pre, one, post)
		for _, b := range [][]byte{pre, b} {
			recs, damaged := parseSegment(b, id)
			require.GreaterOrEqual(t, damaged, 0)
			for _, r := range recs {
				require.LessOrEqual(t, r.next, len(b))
				require.Equal(t, b[r.off:r.next], r.data)
				require.Equal(t, r.env.CRC, checksum(r.data))
				require.Equal(t, id, r.env.Seg)
			}
		}

		recs, _ := parseSegment(b, id)
		var found []segRecord
		for _, r := range recs {
			if r.off == len(pre)+len(hdr) {
				found = append(found, r)
			}
		}
		require.Len(t, found, 1, "junk around a record never hides it")
		got := found[0]
		require.Equal(t, "m3", got.env.ID)
		require.Equal(t, env.From, got.env.From)
		require.Equal(t, env.To, got.env.To)
		require.True(t, env.Received.Equal(got.env.Received))
		require.Equal(t, data, got.data)
		require.Equal(t, len(pre)+len(one), got.next)

		env.ID = ""
		line, err := encodeEnvelope(env)
		require.NoError(t, err, "an envelope that fits a record header fits a message file")
		fenv, fdata, err := splitMessage(append(line, data...))
		require.NoError(t, err)
		require.Equal(t, env.From, fenv.From)
		require.Equal(t, env.To, fenv.To)
		require.Equal(t, data, fdata)

		bad := slices.Clone(one)
		bad[flip%uint(len(hdr))] ^= 1 << (flip / uint(len(hdr)) % 8)
		_, err = parseRecord(bad, id)
		require.Error(t, err, "a header with a flipped bit at %d", flip%uint(len(hdr)))
	})
}

// A body full of header starts and no line end (attacker-controlled content left in a
// recycled segment) is skipped in one pass: looking for a line end at each would take
// hours at recovery.
func TestParseSegmentQuotedHeaders(t *testing.T) {
	const id = "00000000000000ab"
	data := []byte("Subject: x\r\n\r\n")
	h, err := encodeRecordHeader(envelope{ID: "m1", From: "a@b", To: rawStrings{"c@d"}, Size: len(data), CRC: checksum(data)})
	require.NoError(t, err)
	sealRecordHeader(h, id)
	b := append(append(h, data...), bytes.Repeat([]byte(segMagic+`{"seg":"00000000000000aa"`), 1<<15)...)
	recs, damaged := parseSegment(b, id)
	require.Len(t, recs, 1)
	require.Zero(t, damaged)
}

// A segment of the format before header checksums is neither read nor dropped as damage:
// Open and the admin commands refuse the spool, saying which file and what to do.
func TestEarlierSegmentFormatRefused(t *testing.T) {
	e := newEnv(t)
	const id = "00000000000000ab"
	data := msg("old")
	old := segMagicV1 + `{"seg":"` + id + `","id":"old","from":"a@b","to":["c@d"],"received":"2026-01-02T03:04:05Z","size":` +
		strconv.Itoa(len(data)) + `,"crc":` + strconv.FormatUint(uint64(checksum(data)), 10) + "}\n"
	require.NoError(t, os.WriteFile(segPath(e.dir, id), append([]byte(old), data...), 0o600))
	_, _, err := Open(e.opts)
	require.ErrorContains(t, err, "seg-"+id+".log: a segment of an earlier spool format")
	_, err = List(e.dir)
	require.ErrorContains(t, err, "earlier spool format")
	_, err = os.Stat(segPath(e.dir, id))
	require.NoError(t, err, "kept")
}
