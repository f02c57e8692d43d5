package signer

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"hash"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The DKIM-Signature fields are computed here rather than by go-msgauth's dkim.Signer,
// which runs a goroutine and a pipe per signature and canonicalizes the body one byte at a
// time with two allocations per write (its cost is in bench/RESULTS.md). This file produces the same field, byte for byte, as dkim.Signer with the options Sign
// used (relaxed/relaxed, SHA-256, the h= list of headerSet.keys): the same header reading,
// canonicalization, tag order and folding. TestSignMatchesGoMsgauth and FuzzSignMatchesGoMsgauth
// compare the two; go-msgauth's verifier and dkimpy check the result in the other tests.

const crlf = "\r\n"

// ctxEvery is how many units of work (octets read, or octets of the fields visited)
// signing does between looks at its context: a cancelled signing stops within about a
// millisecond, and the look costs nothing next to the work.
const ctxEvery = 64 << 10

// meter counts the work of one signing and stops it when its context ends. Every loop of
// the canonicalization adds what it read, so work is also what TestSignWorkLinear checks:
// at most 3 units per octet of the message, however its header is split into lines.
type meter struct {
	ctx  context.Context
	work int // units done
	next int // work at which ctx is looked at again
}

func newMeter(ctx context.Context) *meter { return &meter{ctx: ctx} }

// add counts n more units, and returns ctx.Err() when the context has ended.
func (m *meter) add(n int) error {
	m.work += n
	if m.work < m.next {
		return nil
	}
	m.next = m.work + ctxEvery
	return m.ctx.Err()
}

// readFields splits msg into its header fields (continuation lines included, each line
// ending in CRLF, as go-msgauth's readHeader reads them with net/textproto) and its body.
// msg must hold the empty line that ends the header.
func readFields(m *meter, msg []byte) (fields []string, body []byte, err error) {
	// The fields are read into one buffer and sliced from one string made of it: appending
	// each continuation line to a string copied the field so far every time, quadratic in
	// its lines, and a string per field costs an allocation per line in a header of many.
	var buf []byte
	var starts []int // where each field starts in buf
	for len(msg) > 0 {
		i := bytes.IndexByte(msg, '\n')
		if i < 0 {
			// Not reached: msg is complete. A last line without LF would be a field.
			i = len(msg)
		}
		if err := m.add(i + 1); err != nil {
			return nil, nil, err
		}
		line := msg[:i]
		if n := len(line); n > 0 && line[n-1] == '\r' && i < len(msg) {
			line = line[:n-1]
		}
		msg = msg[min(i+1, len(msg)):]
		if len(line) == 0 {
			body = msg
			break
		}
		if len(starts) == 0 || line[0] != ' ' && line[0] != '\t' {
			starts = append(starts, len(buf))
		}
		buf = append(append(buf, line...), crlf...)
	}
	all := string(buf)
	fields = make([]string, len(starts))
	for i, start := range starts {
		end := len(all)
		if i+1 < len(starts) {
			end = starts[i+1]
		}
		fields[i] = all[start:end]
	}
	return fields, body, nil
}

// fieldName is the name of a header field as go-msgauth compares it.
func fieldName(kv string) string {
	k, _, _ := strings.Cut(kv, ":")
	return strings.TrimSpace(k)
}

// appendRelaxedHeader appends the relaxed canonical form of a header field (RFC 6376
// §3.4.2), as go-msgauth computes it: the name lowercased and trimmed, the value's runs of
// SP, HTAB, CR and LF made one SP, none at either end.
func appendRelaxedHeader(b []byte, kv string) []byte {
	k, v, ok := strings.Cut(kv, ":")
	if !ok {
		b = append(b, strings.TrimSpace(strings.ToLower(kv))...)
		return append(b, ":"+crlf...)
	}
	b = append(b, strings.TrimSpace(strings.ToLower(k))...)
	b = append(b, ':')
	first := true
	for {
		i := 0
		for i < len(v) && special[v[i]] {
			i++
		}
		if v = v[i:]; len(v) == 0 {
			return append(b, crlf...)
		}
		j := 1
		for j < len(v) && !special[v[j]] {
			j++
		}
		if !first {
			b = append(b, ' ')
		}
		b = append(b, v[:j]...)
		v, first = v[j:], false
	}
}

// canonicalHeaders is the relaxed form of the fields that keys select, in order: each name
// takes the last instance of that name not taken yet (RFC 6376 §5.4.2); a name with no
// instance left (an oversigned one) contributes nothing. Names compare with EqualFold.
//
// Each field is matched once against the distinct names of keys, and the fields of each
// name are chained from the last, so a key takes its field in constant time: scanning the
// fields from the end for every key was quadratic in a header of many signed fields. The
// distinct names are the configured ones, a handful.
func canonicalHeaders(m *meter, fields []string, keys []string) ([]byte, error) {
	var names []string              // the distinct names of keys
	class := make([]int, len(keys)) // index in names of each key
	for i, k := range keys {
		if i > 0 && k == keys[i-1] { // headerSet.keys lists each name's repeats together
			class[i] = class[i-1]
			continue
		}
		j := slices.IndexFunc(names, func(n string) bool { return strings.EqualFold(n, k) })
		if j < 0 {
			j = len(names)
			names = append(names, k)
		}
		class[i] = j
	}
	last := make([]int, len(names)) // per name, the last field not taken, or -1
	for j := range last {
		last[j] = -1
	}
	prev := make([]int, len(fields)) // per field, the field of its name before it, or -1
	size := 0
	for i, kv := range fields {
		if err := m.add(len(kv)); err != nil {
			return nil, err
		}
		prev[i] = -1
		n := fieldName(kv)
		if j := slices.IndexFunc(names, func(k string) bool { return strings.EqualFold(n, k) }); j >= 0 {
			prev[i], last[j] = last[j], i
			size += len(kv)
		}
	}
	b := make([]byte, 0, size)
	for _, j := range class {
		i := last[j]
		if i < 0 {
			continue
		}
		last[j] = prev[i]
		if err := m.add(len(fields[i])); err != nil {
			return nil, err
		}
		b = appendRelaxedHeader(b, fields[i])
	}
	return b, nil
}

// special marks the octets relaxed body canonicalization looks at.
var special = [256]bool{' ': true, '\t': true, '\r': true, '\n': true}

var bodyBufs = sync.Pool{New: func() any { b := make([]byte, 0, 32<<10); return &b }}

// relaxedBodyHash hashes the relaxed canonical form of body (RFC 6376 §3.4.4) exactly as
// go-msgauth does: a LF without CR before it is read as CRLF; runs of WSP become one SP,
// and go before a line end; line ends are kept only when something follows them, and a
// body that is not empty ends in one CRLF. Runs of other octets are copied whole.
func relaxedBodyHash(m *meter, h hash.Hash, body []byte) error {
	bp := bodyBufs.Get().(*[]byte)
	out := (*bp)[:0]
	var ends []byte // line-end octets not written yet
	wsp, written, prevCR := false, false, false
	counted := 0 // octets of body added to m
	for i := 0; i < len(body); {
		if i-counted >= ctxEvery {
			if err := m.add(i - counted); err != nil {
				return err
			}
			counted = i
		}
		c := body[i]
		if !special[c] {
			// A run goes on across single spaces between other octets: they stay as
			// they are, and text is mostly such runs, one per line.
			j := i + 1
			for j < len(body) && (!special[body[j]] || body[j] == ' ' && j+1 < len(body) && !special[body[j+1]]) {
				j++
			}
			if len(ends) > 0 {
				out = append(out, ends...)
				ends = ends[:0]
			}
			if wsp {
				out = append(out, ' ')
				wsp = false
			}
			out = append(out, body[i:j]...)
			written, prevCR = true, false
			i = j
			if len(out) >= cap(*bp)-1024 {
				h.Write(out)
				out = out[:0]
			}
			continue
		}
		switch c {
		case ' ', '\t':
			wsp, prevCR = true, false
		case '\r':
			wsp, prevCR = false, true
			ends = append(ends, '\r')
		case '\n':
			if !prevCR {
				ends = append(ends, '\r')
			}
			wsp, prevCR = false, false
			ends = append(ends, '\n')
		}
		i++
	}
	if written {
		out = append(out, crlf...)
	}
	h.Write(out)
	if cap(out) <= 1<<20 {
		*bp = out[:0]
		bodyBufs.Put(bp)
	}
	return m.add(len(body) - counted)
}

// tag is one tag=value of a DKIM-Signature field.
type tag struct{ k, v string }

// formatSignature writes the field as go-msgauth does: the tags but b= (which the caller
// lists in name order, as go-msgauth sorts them) on lines of at most about 75 octets, then
// b= on lines of its own, 75 octets each.
func formatSignature(tags []tag, b string) string {
	var s strings.Builder
	s.WriteString("DKIM-Signature:")
	line := ""
	for _, t := range tags {
		if 3+len(line)+len(t.v)+len(t.k) > 75 {
			s.WriteString(line + crlf)
			line = ""
		}
		line += " " + t.k + "=" + t.v + ";"
	}
	s.WriteString(line)
	s.WriteString(crlf)
	v := " b=" + b
	for first := true; len(v) > 0 || first; first = false {
		if !first {
			s.WriteString("\r\n ")
		}
		n := min(75, len(v))
		s.WriteString(v[:n])
		v = v[n:]
	}
	s.WriteString(crlf)
	return s.String()
}

// dkimSign returns the DKIM-Signature fields of msg (complete: it ends its header with an
// empty line) for d= domain, one per key, signing the fields hkeys selects. It stops with
// an error wrapping m's context's error when that context ends.
func dkimSign(m *meter, domain string, ks []key, msg []byte, hkeys []string, now time.Time) ([]byte, error) {
	fields, body, err := readFields(m, msg)
	if err != nil {
		return nil, fmt.Errorf("dkim sign d=%s: %w", domain, err)
	}
	bh := sha256.New()
	if err := relaxedBodyHash(m, bh, body); err != nil {
		return nil, fmt.Errorf("dkim sign d=%s: %w", domain, err)
	}
	var sum [sha256.Size]byte
	bodyHash := base64.StdEncoding.EncodeToString(bh.Sum(sum[:0]))
	headers, err := canonicalHeaders(m, fields, hkeys)
	if err != nil {
		return nil, fmt.Errorf("dkim sign d=%s: %w", domain, err)
	}
	h := strings.Join(hkeys, ":")
	t := strconv.FormatInt(now.Unix(), 10)

	var out []byte
	for _, k := range ks {
		tags := []tag{ // in name order
			{"a", k.algo}, {"bh", bodyHash}, {"c", "relaxed/relaxed"}, {"d", domain},
			{"h", h}, {"s", k.selector}, {"t", t}, {"v", "1"},
		}
		hh := sha256.New()
		hh.Write(headers)
		unsigned := appendRelaxedHeader(nil, formatSignature(tags, ""))
		hh.Write(bytes.TrimRight(unsigned, crlf))
		hashed := hh.Sum(sum[:0])
		opts := crypto.SignerOpts(crypto.SHA256)
		if k.algo == algoEd25519 {
			opts = crypto.Hash(0) // RFC 8463: Ed25519 signs the SHA-256 hash itself
		}
		sig, err := k.signer.Sign(rand.Reader, hashed, opts)
		if err != nil {
			return nil, signError(domain, k, err)
		}
		out = append(out, formatSignature(tags, base64.StdEncoding.EncodeToString(sig))...)
	}
	return out, nil
}
