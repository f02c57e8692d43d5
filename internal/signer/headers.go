package signer

import (
	"bytes"
	"fmt"
	"slices"
	"strings"

	"relay/internal/config"
	"relay/internal/names"
)

// oversigned are the fields listed in h= once more than the message holds them (RFC 6376
// §8.15), so that one added after signing breaks the signature: From, because it is what
// receivers show and DMARC checks; Reply-To, because on rewrite it is the only way back to
// the real sender, and a second one added later would divert the replies.
var oversigned = [...]string{"From", "Reply-To"}

// headerSet is the configured list of fields to sign, with the oversigned fields always in
// it.
type headerSet struct {
	names []string             // as configured, without duplicates: the spelling used in h=
	match [][]byte             // the same names, for comparing with the message without converting
	over  [len(oversigned)]int // index in names of each oversigned field
}

func newHeaderSet(cfg []string) (headerSet, error) {
	if len(cfg) == 0 {
		cfg = config.DefaultHeaders()
	}
	var hs headerSet
	for i, n := range cfg {
		if !names.FieldName(n) {
			return headerSet{}, fmt.Errorf("dkim.headers[%d]: %q is not a header field name", i, n)
		}
		// Existing DKIM-Signature fields are kept unsigned (SPEC §6): signing one would
		// break our signature whenever a later hop strips or re-folds it.
		if strings.EqualFold(n, "DKIM-Signature") || slices.ContainsFunc(hs.names, func(o string) bool { return strings.EqualFold(o, n) }) {
			continue
		}
		hs.names = append(hs.names, n)
	}
	// From must be signed (RFC 6376 §5.4), and Reply-To must be for its oversigning to mean
	// anything: a list without them gets each where the default list has it, From first
	// and Reply-To right after From.
	at := 0
	for _, o := range oversigned {
		i := slices.IndexFunc(hs.names, func(n string) bool { return strings.EqualFold(n, o) })
		if i < 0 {
			i = at
			hs.names = slices.Insert(hs.names, i, o)
		}
		at = i + 1
	}
	for j, o := range oversigned {
		hs.over[j] = slices.IndexFunc(hs.names, func(n string) bool { return strings.EqualFold(n, o) })
	}
	hs.match = make([][]byte, len(hs.names))
	for i, n := range hs.names {
		hs.match[i] = []byte(n)
	}
	return hs, nil
}

// keys returns the h= list for msg, in the configured order: each configured field as many
// times as the header of msg holds it (RFC 6376 §5.4.2: then every instance is covered),
// the oversigned fields (From, Reply-To) one time more, so that even when absent they are
// listed once, other absent fields not at all. complete reports whether the header ends
// with an empty line.
//
// It scans lines without parsing the header, and mirrors go-msgauth's reader so the counts
// match what the signer will pick: a line starting with SP or HTAB continues the field
// above it (except on the first line), a name is what precedes the first ':' (the whole
// line when there is none) with white space trimmed, names compare with EqualFold.
func (hs *headerSet) keys(msg []byte) (keys []string, complete bool) {
	var cb [32]int // on the stack for any reasonable list
	var counts []int
	if len(hs.names) <= len(cb) {
		counts = cb[:len(hs.names)]
	} else {
		counts = make([]int, len(hs.names))
	}
	total := len(hs.over)
	first := true
	for len(msg) > 0 {
		line := msg
		if i := bytes.IndexByte(msg, '\n'); i >= 0 {
			line, msg = msg[:i], msg[i+1:]
			if n := len(line); n > 0 && line[n-1] == '\r' {
				line = line[:n-1]
			}
		} else {
			// bufio.Reader.ReadLine keeps a final CR that no LF follows.
			msg = nil
		}
		if len(line) == 0 {
			complete = true
			break
		}
		if !first && (line[0] == ' ' || line[0] == '\t') {
			continue
		}
		first = false
		name := line
		if colon := bytes.IndexByte(line, ':'); colon >= 0 {
			name = line[:colon]
		}
		name = bytes.TrimSpace(name)
		for j, m := range hs.match {
			if bytes.EqualFold(name, m) {
				counts[j]++
				total++
				break
			}
		}
	}

	keys = make([]string, 0, total)
	for j, n := range hs.names {
		c := counts[j]
		if slices.Contains(hs.over[:], j) {
			c++
		}
		for ; c > 0; c-- {
			keys = append(keys, n)
		}
	}
	return keys, complete
}
