package rewrite

import (
	"bytes"
	"fmt"
	"strings"

	"relay/internal/names"
)

// verify checks the invariants every output of Apply must hold, whatever the input: the
// golden tests and FuzzApply both run it.
func verify(in *Message, o Options, out []byte) error {
	m, err := Parse(out)
	if err != nil {
		return fmt.Errorf("output does not parse: %v", err)
	}
	if !bytes.Equal(m.Body, in.Body) || !bytes.Equal(m.Separator, in.Separator) {
		return fmt.Errorf("body changed: %q%q -> %q%q", in.Separator, in.Body, m.Separator, m.Body)
	}
	froms := 0
	for _, f := range m.Fields {
		switch {
		case strings.EqualFold(f.Name, "From"):
			froms++
		case strings.EqualFold(f.Name, "Bcc"), strings.EqualFold(f.Name, "X-Relay-Unit"):
			return fmt.Errorf("%s field left: %q", f.Name, f.Raw)
		}
	}
	if froms > 1 || o.Rewrite && froms != 1 {
		return fmt.Errorf("%d From fields (rewrite %v)", froms, o.Rewrite)
	}

	// The input's fields must appear in the output in order and byte for byte, except those
	// Apply may drop; whatever else is in the output was written by Apply.
	j := 0
	var added []Field
	for _, f := range m.Fields {
		k := j
		for k < len(in.Fields) && !sameField(in.Fields[k].Raw, f.Raw) && droppable(in.Fields[k], o) {
			k++
		}
		if k < len(in.Fields) && sameField(in.Fields[k].Raw, f.Raw) {
			j = k + 1
			continue
		}
		added = append(added, f)
	}
	for ; j < len(in.Fields); j++ {
		if !droppable(in.Fields[j], o) {
			return fmt.Errorf("input field %q missing from the output", in.Fields[j].Raw)
		}
	}
	if len(added) > 6 {
		return fmt.Errorf("%d fields added", len(added))
	}
	for _, f := range added {
		if err := checkWritten(f, o); err != nil {
			return err
		}
	}

	if o.Rewrite && names.FieldName(o.OriginalHeader) {
		// The original-From record is the relay's alone: exactly one when the input had a
		// From to record, none otherwise, whatever the client wrote under that name.
		n, want := 0, 0
		for _, f := range m.Fields {
			if strings.EqualFold(f.Name, o.OriginalHeader) {
				n++
			}
		}
		if in.Has("From") {
			want = 1
		}
		if n != want {
			return fmt.Errorf("%d %s fields, want %d", n, o.OriginalHeader, want)
		}
	}

	if o.Rewrite {
		a, err := m.From()
		if err != nil {
			return fmt.Errorf("rewritten From does not parse: %v", err)
		}
		if a.Address != o.NewFrom {
			return fmt.Errorf("rewritten From address %q, want %q", a.Address, o.NewFrom)
		}
		if strings.ContainsAny(a.Name, "@\r\n") {
			return fmt.Errorf("rewritten From display name %q holds '@' or a line break", a.Name)
		}
	}
	return nil
}

// sameField reports whether out is the input field raw, allowing the CRLF Apply adds to a
// last header line that had no line end.
func sameField(raw, out []byte) bool {
	return bytes.Equal(raw, out) ||
		raw[len(raw)-1] != '\n' && len(out) == len(raw)+2 && bytes.HasPrefix(out, raw) && bytes.HasSuffix(out, []byte("\r\n"))
}

func droppable(f Field, o Options) bool {
	switch {
	case strings.EqualFold(f.Name, "Bcc"), strings.EqualFold(f.Name, "X-Relay-Unit"):
		return true
	case o.Rewrite && (strings.EqualFold(f.Name, "From") || strings.EqualFold(f.Name, "Sender")):
		return true
	case o.Rewrite && names.FieldName(o.OriginalHeader) && strings.EqualFold(f.Name, o.OriginalHeader):
		return true
	}
	return false
}

// checkWritten checks a field Apply wrote: CRLF line ends only, each followed by white space
// unless it ends the field; no other CR or LF; no line over 998 octets (RFC 5322 §2.1.1);
// and in the From, a line over 78 characters only when it holds a single word.
func checkWritten(f Field, o Options) error {
	raw := f.Raw
	if !bytes.HasSuffix(raw, []byte("\r\n")) {
		return fmt.Errorf("written field %q does not end in CRLF", raw)
	}
	lines := bytes.Split(raw[:len(raw)-2], []byte("\r\n"))
	for i, l := range lines {
		if bytes.ContainsAny(l, "\r\n") {
			return fmt.Errorf("written field %q has a bare CR or LF", raw)
		}
		if i > 0 && (len(l) == 0 || l[0] != ' ' && l[0] != '\t') {
			return fmt.Errorf("written field %q has a line break that is not folding", raw)
		}
		if f.Name != "From" || !o.Rewrite {
			continue
		}
		if len(l) > 998 {
			return fmt.Errorf("From line of %d octets: %q", len(l), l)
		}
		if len(l) > maxLine {
			w := bytes.TrimPrefix(l, []byte("From:"))
			if bytes.IndexByte(w[1:], ' ') >= 0 {
				return fmt.Errorf("From line of %d characters could have been folded: %q", len(l), l)
			}
		}
	}
	return nil
}
