package spool

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// On-disk layout of a spool directory (state on disk is the truth; the server's memory is a
// cache of it, so `relay queue` works from another process):
//
//	seg-*.log   accepted messages, appended in batches (see segment.go)
//	seg-*.done  the ids of a segment's messages that are done
//	ID.msg      a message that waits for a retry, moved out of its segment: the envelope
//	            on one line, then the message exactly as it will be sent
//	ID.state    delivery state, written only once an attempt has left work to do
//	.tmp-*      a file being written, or a retired segment kept as a spare; removed by Open
//	ID.bad      a message file that could not be parsed, set aside by Open for the admin
//	ctl/        requests from `relay queue` to the running server (see admin.go)
//	lock        flocked by the server that has the spool open
const (
	msgSuffix   = ".msg"
	stateSuffix = ".state"
	badSuffix   = ".bad"
	tmpPrefix   = ".tmp-"
	ctlDir      = "ctl"
	lockFile    = "lock"

	// magic starts every message file; the number is the format version.
	magic = "RELAY-SPOOL-1 "
	// maxEnvelopeLine bounds the first line of a message file and a segment's record
	// header, line end included, so a damaged file cannot make Open or List read a whole
	// message as the envelope. MaxRecipients addresses of the longest path SMTP allows
	// (RFC 5321 §4.5.3.1: 64 octets of local part, 256 of path), JSON-quoted, fit; Put
	// refuses a longer line (ErrEnvelopeTooLarge) rather than write what Open would skip.
	maxEnvelopeLine = 1 << 20
)

// MaxRecipients is the most recipients a message may have in the spool (RFC 5321
// §4.5.3.1.8 asks for at least 100). Put refuses more with ErrTooManyRecipients, and the
// readers take more as damage. The SMTP front end's max_recipients should not exceed it,
// so that a client learns it at RCPT time rather than after DATA.
const MaxRecipients = 1000

// Refusals of Put for an envelope the spool cannot hold, before anything is written.
// They come wrapped in an *Error, whose SMTPReply answers with theirs.
var (
	// ErrTooManyRecipients: temporary, the client may send again to fewer recipients.
	ErrTooManyRecipients error = &refusal{452, [3]int{4, 5, 3}, fmt.Sprintf("Too many recipients (at most %d per message)", MaxRecipients)}
	// ErrEnvelopeTooLarge: the envelope (the addresses) does not fit a header line.
	ErrEnvelopeTooLarge error = &refusal{552, [3]int{5, 3, 4}, "Envelope too large for the spool (addresses too long)"}
)

// refusal is an envelope refused for a limit, with the reply for the client.
type refusal struct {
	code int
	enh  [3]int
	msg  string
}

func (r *refusal) Error() string                    { return r.msg }
func (r *refusal) SMTPReply() (int, [3]int, string) { return r.code, r.enh, r.msg }

// checkEnvelope holds the limits that every reader (segment records, message files)
// enforces on an envelope and that the writer checks before it writes one; the line length
// is checked where the line is encoded or read.
func checkEnvelope(env envelope) error {
	switch {
	case len(env.To) == 0:
		return errors.New("envelope without recipients")
	case len(env.To) > MaxRecipients:
		return fmt.Errorf("%w: %d", ErrTooManyRecipients, len(env.To))
	case env.Size < 0:
		return errors.New("envelope with a negative size")
	}
	return nil
}

// envelope is the first line of a message file, after magic.
type envelope struct {
	// ID and Seg are set in a segment's records only: the message's id, and the segment
	// the record was written to (a recycled segment still holds records of its old id).
	// Seg comes first: the writer fills it in the encoded header (setRecordSeg).
	Seg      string     `json:"seg,omitempty"`
	ID       string     `json:"id,omitempty"`
	From     rawString  `json:"from"`
	To       rawStrings `json:"to"`
	Received time.Time  `json:"received"`
	// Size is the length of the message that follows: a shorter file is damaged.
	Size int `json:"size"`
	// CRC is the CRC-32C of the message: after a crash, a record or file whose blocks were
	// never written (never acknowledged) may have the right size; the checksum tells it
	// from a good one.
	CRC uint32 `json:"crc,omitempty"`
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// checksum is the CRC of a message as the envelope records it.
func checksum(data []byte) uint32 { return crc32.Checksum(data, castagnoli) }

// state is the content of an ID.state file: a State, with its addresses kept byte for byte.
type state struct {
	Attempts  int        `json:"attempts"`
	NextTry   time.Time  `json:"next_try"`
	LastTry   time.Time  `json:"last_try"`
	LastError string     `json:"last_error,omitempty"`
	Delivered rawStrings `json:"delivered,omitempty"`
	Bounced   rawStrings `json:"bounced,omitempty"`
}

func fileState(st State) state {
	return state{Attempts: st.Attempts, NextTry: st.NextTry, LastTry: st.LastTry, LastError: st.LastError, Delivered: st.Delivered, Bounced: st.Bounced}
}

func (st state) export() State {
	return State{Attempts: st.Attempts, NextTry: st.NextTry, LastTry: st.LastTry, LastError: st.LastError, Delivered: st.Delivered, Bounced: st.Bounced}
}

// rawString is a string that survives JSON byte for byte. encoding/json would turn
// invalid UTF-8 into U+FFFD, and an address is not ours to change: one that is not UTF-8
// is written as {"base64": "..."} instead.
type rawString string

type rawStrings []string

func (s rawString) MarshalJSON() ([]byte, error) {
	if utf8.ValidString(string(s)) {
		return json.Marshal(string(s))
	}
	return json.Marshal(struct {
		Base64 []byte `json:"base64"`
	}{[]byte(s)})
}

func (s *rawString) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '{' {
		var v struct {
			Base64 []byte `json:"base64"`
		}
		err := json.Unmarshal(b, &v)
		*s = rawString(v.Base64)
		return err
	}
	var v string
	err := json.Unmarshal(b, &v)
	*s = rawString(v)
	return err
}

func (l rawStrings) MarshalJSON() ([]byte, error) {
	r := make([]rawString, len(l))
	for i, s := range l {
		r[i] = rawString(s)
	}
	return json.Marshal(r)
}

func (l *rawStrings) UnmarshalJSON(b []byte) error {
	var r []rawString
	if err := json.Unmarshal(b, &r); err != nil {
		return err
	}
	*l = make(rawStrings, len(r))
	for i, s := range r {
		(*l)[i] = string(s)
	}
	return nil
}

// validID keeps ids usable as file names: no path separators, no leading dot (temp files
// and hidden files start with one), nothing the shell or the admin would trip over.
func validID(id string) error {
	if id == "" || len(id) > 128 || id[0] == '.' {
		return fmt.Errorf("invalid spool id %q", id)
	}
	for _, c := range id {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
		default:
			return fmt.Errorf("invalid spool id %q", id)
		}
	}
	return nil
}

func msgPath(dir, id string) string   { return filepath.Join(dir, id+msgSuffix) }
func statePath(dir, id string) string { return filepath.Join(dir, id+stateSuffix) }

// encodeEnvelope returns the first line of a message file.
func encodeEnvelope(env envelope) ([]byte, error) {
	if err := checkEnvelope(env); err != nil {
		return nil, err
	}
	line := make([]byte, 0, 256)
	line = append(line, magic...)
	line, err := appendEnvelopeJSON(line, env) // JSON escapes CR and LF: the line stays one line
	if err != nil {
		return nil, err
	}
	line = append(line, '\n')
	if len(line) > maxEnvelopeLine {
		// Not when the record header of the same envelope fitted: this line is shorter.
		return nil, fmt.Errorf("%w: an envelope of %d octets, the limit is %d", ErrEnvelopeTooLarge, len(line), maxEnvelopeLine)
	}
	return line, nil
}

// appendEnvelopeJSON appends env as encoding/json marshals it. Every submission encodes
// one, and json.Marshal, with its reflection and a marshaler per address, cost more than
// the rest of the spool's own work together; the common envelope (plain ASCII addresses)
// is written directly, byte for byte what json.Marshal writes (FuzzEnvelopeJSON checks).
func appendEnvelopeJSON(b []byte, env envelope) ([]byte, error) {
	start := len(b)
	ok := env.Received.Year() >= 0 && env.Received.Year() <= 9999
	field := func(name string, v string) {
		if ok {
			b = append(b, `"`+name+`":`...)
			b, ok = appendPlainJSON(b, v)
			b = append(b, ',')
		}
	}
	b = append(b, '{')
	if env.Seg != "" {
		field("seg", env.Seg)
	}
	if env.ID != "" {
		field("id", env.ID)
	}
	field("from", string(env.From))
	b = append(b, `"to":[`...)
	for i, r := range env.To {
		if i > 0 {
			b = append(b, ',')
		}
		if ok {
			b, ok = appendPlainJSON(b, r)
		}
	}
	b = append(b, ']')
	if !ok {
		j, err := json.Marshal(env)
		return append(b[:start], j...), err
	}
	b = append(b, `,"received":"`...)
	b = env.Received.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","size":`...)
	b = strconv.AppendInt(b, int64(env.Size), 10)
	if env.CRC != 0 {
		b = append(b, `,"crc":`...)
		b = strconv.AppendUint(b, uint64(env.CRC), 10)
	}
	return append(b, '}'), nil
}

// appendPlainJSON appends s quoted when JSON needs no escape for it (printable ASCII but
// for the characters encoding/json escapes); ok is false otherwise.
func appendPlainJSON(b []byte, s string) (_ []byte, ok bool) {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return b, false
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"'), true
}

// parseEnvelope parses the first line of a message file, without its line end.
func parseEnvelope(line []byte) (envelope, error) {
	var env envelope
	rest, ok := bytes.CutPrefix(line, []byte(magic))
	if !ok {
		return env, errors.New("not a spool message file")
	}
	if err := json.Unmarshal(rest, &env); err != nil {
		return env, fmt.Errorf("envelope: %w", err)
	}
	return env, checkEnvelope(env)
}

// errTruncated is a message file without a whole envelope line.
var errTruncated = errors.New("no complete envelope line")

// readEnvelope reads the envelope of path and checks that the message that follows is
// whole. It does not read the message.
func readEnvelope(path string) (envelope, error) {
	f, err := os.Open(path)
	if err != nil {
		return envelope{}, err
	}
	defer f.Close()
	line, err := bufio.NewReader(io.LimitReader(f, maxEnvelopeLine)).ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		// Longer than bufio's buffer: rare (hundreds of recipients), so read it plainly.
		if _, err = f.Seek(0, io.SeekStart); err != nil {
			return envelope{}, err
		}
		line, err = bufio.NewReader(io.LimitReader(f, maxEnvelopeLine)).ReadBytes('\n')
	}
	if err == io.EOF {
		err = errTruncated
	}
	if err != nil {
		return envelope{}, fmt.Errorf("%s: %w", path, err)
	}
	env, err := parseEnvelope(line[:len(line)-1])
	if err != nil {
		return env, fmt.Errorf("%s: %w", path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		return env, err
	}
	if fi.Size() != int64(len(line)+env.Size) {
		return env, fmt.Errorf("%s: %d octets, the envelope says %d", path, fi.Size(), len(line)+env.Size)
	}
	return env, nil
}

// splitMessage parses the content of a message file into its envelope and message.
func splitMessage(b []byte) (envelope, []byte, error) {
	i := bytes.IndexByte(b[:min(len(b), maxEnvelopeLine)], '\n')
	if i < 0 {
		return envelope{}, nil, errTruncated
	}
	env, err := parseEnvelope(b[:i])
	if err != nil {
		return env, nil, err
	}
	if len(b) != i+1+env.Size {
		return env, nil, fmt.Errorf("%d octets, the envelope says %d", len(b), i+1+env.Size)
	}
	if env.CRC != 0 && checksum(b[i+1:]) != env.CRC {
		return env, nil, errors.New("checksum mismatch: the message was not completely written")
	}
	return env, b[i+1:], nil
}

// readMessage reads a whole message file: the envelope and the message.
func readMessage(path string) (envelope, []byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return envelope{}, nil, err
	}
	env, data, err := splitMessage(b)
	if err != nil {
		return env, nil, fmt.Errorf("%s: %w", path, err)
	}
	return env, data, nil
}

// readState reads ID.state; a missing file is the state of a message never attempted.
func readState(dir, id string) (State, error) {
	var st state
	b, err := os.ReadFile(statePath(dir, id))
	if errors.Is(err, os.ErrNotExist) {
		return State{}, nil
	}
	if err != nil {
		return State{}, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st.export(), fmt.Errorf("%s: %w", statePath(dir, id), err)
	}
	return st.export(), nil
}

// writeFile makes name in dir hold the bytes of parts, durably: a temp file is written,
// fsynced and renamed over name, then the directory is fsynced (syncDir), so that after a
// crash name holds either its old content or all of the new one, never a part of it.
func writeFile(dir *os.File, name string, syncDir func() error, parts ...[]byte) error {
	f, err := os.CreateTemp(dir.Name(), tmpPrefix+"*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	for _, p := range parts {
		if _, err := f.Write(p); err != nil {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir.Name(), name)); err != nil {
		return err
	}
	ok = true
	return syncDir()
}

// removeFiles removes a message and then its state: in this order a crash in between
// leaves a state file without a message, which Open discards, rather than a message whose
// delivered recipients were forgotten.
func removeFiles(dir, id string) error {
	err := os.Remove(msgPath(dir, id))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	err = os.Remove(statePath(dir, id))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// idOf returns the id of a message file name, or "".
func idOf(name string) string {
	id, ok := strings.CutSuffix(name, msgSuffix)
	if !ok || validID(id) != nil {
		return ""
	}
	return id
}
