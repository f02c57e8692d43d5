package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

type options struct {
	addr       string
	n, size, c int
	from       string
	to         []string
	headerFrom string
	helo       string
	timeout    time.Duration
	source     netip.Addr    // local address to connect from (zero: the kernel's choice)
	retries    int           // further attempts for a message refused with 4xx or cut off
	retryWait  time.Duration // pause before each further attempt
	outcomes   io.Writer     // one line per attempt (nil: none)

	start time.Time // of the run: the Date and Message-ID of its messages
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("relay-load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	var to string
	fs.StringVar(&o.addr, "addr", "127.0.0.1:2525", "SMTP server host:port")
	fs.IntVar(&o.n, "n", 1000, "messages to send")
	fs.IntVar(&o.size, "size", 10240, "bytes per message, header included")
	fs.IntVar(&o.c, "c", 20, "concurrent SMTP sessions")
	fs.StringVar(&o.from, "from", "app@customer.example", "envelope sender (MAIL FROM)")
	fs.StringVar(&to, "to", "rcpt@dest.example", "recipients (RCPT TO), comma-separated")
	fs.StringVar(&o.headerFrom, "header-from", "Alice <alice@gmail.com>", "From header")
	fs.StringVar(&o.helo, "helo", "localhost", "EHLO name")
	fs.DurationVar(&o.timeout, "timeout", time.Minute, "per command, and for connecting")
	source := fs.String("source", "", "local IP address to connect from, e.g. 127.0.0.2 (default: the kernel's choice)")
	fs.IntVar(&o.retries, "retries", 0, "further attempts for a message refused with 4xx or cut off by a connection fault (5xx is final)")
	fs.DurationVar(&o.retryWait, "retry-wait", 100*time.Millisecond, "pause before each further attempt")
	outcomes := fs.String("outcomes", "", "write one line per attempt to FILE: \"INDEX ATTEMPT ok QUEUE-ID\", \"INDEX ATTEMPT refused CODE\", "+
		"\"INDEX ATTEMPT failed conn\" (the final dot was not sent: not accepted) or \"INDEX ATTEMPT unknown conn\" "+
		"(cut off after the final dot: the server may have accepted it); INDEX is the NNNNNNNN of the Subject \"relay-load NNNNNNNN\"")
	asJSON := fs.Bool("json", false, "print one JSON line")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	o.to = strings.Split(to, ",")
	if fs.NArg() > 0 || o.n < 1 || o.size < 1 || o.c < 1 || o.retries < 0 || o.retryWait < 0 || slices.Contains(o.to, "") {
		fmt.Fprintln(stderr, "relay-load: want -n, -size, -c >= 1, -retries, -retry-wait >= 0, a non-empty -to, and no arguments")
		fs.Usage()
		return 2
	}
	if *source != "" {
		a, err := netip.ParseAddr(*source)
		if err != nil {
			fmt.Fprintf(stderr, "relay-load: -source: %v\n", err)
			return 2
		}
		o.source = a
	}
	var out *os.File
	if *outcomes != "" {
		// Unbuffered, a write per line: a script may watch the file grow during the run.
		f, err := os.Create(*outcomes)
		if err != nil {
			fmt.Fprintf(stderr, "relay-load: %v\n", err)
			return 1
		}
		out = f
		o.outcomes = f
	}

	r := load(o)
	if out != nil {
		if err := out.Close(); err != nil {
			fmt.Fprintf(stderr, "relay-load: -outcomes: %v\n", err)
			return 1
		}
	}
	if *asJSON {
		b, _ := json.Marshal(r)
		fmt.Fprintf(stdout, "%s\n", b)
	} else {
		r.print(stdout, o)
	}
	if r.Failed > 0 {
		return 1
	}
	return 0
}

// report is the outcome of a run. Latencies cover accepted messages only. Sent, OK and
// Failed count messages; with -retries a message may take several attempts, and
// RetryErrors counts the failed attempts that were tried again.
type report struct {
	Sent        int            `json:"sent"`
	OK          int            `json:"ok"`
	Failed      int            `json:"failed"`
	Seconds     float64        `json:"seconds"`
	MsgPerSec   float64        `json:"msg_per_sec"` // accepted messages per second
	Errors      map[string]int `json:"errors"`      // final failures by reply code; "conn" for connection faults
	Attempts    int            `json:"attempts"`
	RetryErrors map[string]int `json:"retry_errors"` // failed attempts that were retried, keyed as Errors
	// Uncertain counts the messages with an attempt cut off after its final dot was sent:
	// the server may have accepted (and will deliver) that copy without the client
	// seeing the 250, so such a message can arrive more than once, or arrive although
	// it counts as failed.
	Uncertain   int     `json:"uncertain"`
	P50ms       float64 `json:"p50_ms"`
	P90ms       float64 `json:"p90_ms"`
	P99ms       float64 `json:"p99_ms"`
	Connections int     `json:"connections"`
}

func (r report) print(w io.Writer, o options) {
	fmt.Fprintf(w, "%d messages of %d bytes to %s over %d sessions (%d connections)\n", r.Sent, o.size, o.addr, min(o.c, o.n), r.Connections)
	fmt.Fprintf(w, "ok %d, failed %d in %.3fs: %.1f msg/s\n", r.OK, r.Failed, r.Seconds, r.MsgPerSec)
	if len(r.Errors) > 0 {
		fmt.Fprintf(w, "errors: %s\n", counts(r.Errors))
	}
	if r.Attempts > r.Sent || r.Uncertain > 0 {
		fmt.Fprintf(w, "attempts %d, uncertain %d, retried: %s\n", r.Attempts, r.Uncertain, counts(r.RetryErrors))
	}
	fmt.Fprintf(w, "latency: p50 %.2fms p90 %.2fms p99 %.2fms\n", r.P50ms, r.P90ms, r.P99ms)
}

func counts(m map[string]int) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return strings.Join(parts, " ")
}

// load sends o.n messages from o.c sessions and gathers the report.
func load(o options) report {
	o.start = time.Now()
	body := makeBody(o)
	var next atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	r := report{Errors: map[string]int{}, RetryErrors: map[string]int{}}
	var wg sync.WaitGroup
	for range min(o.c, o.n) {
		wg.Go(func() {
			s := session{o: o}
			defer s.close()
			for {
				i := int(next.Add(1) - 1)
				if i >= o.n {
					mu.Lock()
					r.Connections += s.dials
					mu.Unlock()
					return
				}
				uncertain := false
				for attempt := 1; ; attempt++ {
					d, id, err := s.send(i, body)
					final := err == nil || attempt > o.retries || permanent(err)
					mu.Lock()
					r.Attempts++
					if o.outcomes != nil {
						fmt.Fprintf(o.outcomes, "%08d %d %s\n", i, attempt, outcome(id, err))
					}
					if isUncertain(err) && !uncertain {
						uncertain = true
						r.Uncertain++
					}
					switch {
					case err == nil:
						r.Sent++
						r.OK++
						lat = append(lat, d)
					case final:
						r.Sent++
						r.Failed++
						r.Errors[errorKey(err)]++
					default:
						r.RetryErrors[errorKey(err)]++
					}
					mu.Unlock()
					if final {
						break
					}
					time.Sleep(o.retryWait)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(o.start)
	r.Seconds = elapsed.Seconds()
	r.MsgPerSec = float64(r.OK) / elapsed.Seconds()
	slices.Sort(lat)
	r.P50ms, r.P90ms, r.P99ms = ms(percentile(lat, 50)), ms(percentile(lat, 90)), ms(percentile(lat, 99))
	return r
}

// session is one SMTP session, kept from message to message and opened again after a fault.
type session struct {
	o     options
	c     *smtp.Client
	dials int
}

// send sends message i and returns the time from MAIL FROM to the reply to the final dot,
// and the queue id of a 250 "... queued as ID" ("-" when the reply names none).
func (s *session) send(i int, body []byte) (time.Duration, string, error) {
	if s.c == nil {
		d := net.Dialer{Timeout: s.o.timeout}
		if s.o.source.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: s.o.source.AsSlice()}
		}
		conn, err := d.Dial("tcp", s.o.addr)
		if err != nil {
			return 0, "", err
		}
		s.c = smtp.NewClient(conn)
		s.c.CommandTimeout, s.c.SubmissionTimeout = s.o.timeout, s.o.timeout
		if err := s.c.Hello(s.o.helo); err != nil {
			s.close()
			return 0, "", err
		}
		s.dials++
	}
	start := time.Now()
	id, err := s.transact(i, body)
	d := time.Since(start)
	var se *smtp.SMTPError
	switch {
	case err == nil:
	case errors.As(err, &se) && se.Code != 421:
		// A refusal leaves the session usable once the transaction is reset. Only then
		// RSET: go-smtp follows it with a new EHLO, which would skew the latencies.
		if s.c.Reset() != nil {
			s.close()
		}
	default:
		s.close()
	}
	return d, id, err
}

// errAfterDot marks a connection fault after the final dot was written: whether the
// server accepted the message is unknown.
type errAfterDot struct{ err error }

func (e errAfterDot) Error() string { return "after the final dot: " + e.err.Error() }
func (e errAfterDot) Unwrap() error { return e.err }

func (s *session) transact(i int, body []byte) (string, error) {
	var opts *smtp.MailOptions
	if !isASCII(s.o.from) || !isASCII(strings.Join(s.o.to, "")) {
		opts = &smtp.MailOptions{UTF8: true}
	}
	if err := s.c.Mail(s.o.from, opts); err != nil {
		return "", err
	}
	for _, rcpt := range s.o.to {
		if err := s.c.Rcpt(rcpt, nil); err != nil {
			return "", err
		}
	}
	w, err := s.c.Data()
	if err != nil {
		return "", err
	}
	if _, err := w.Write(header(s.o, i)); err != nil {
		return "", err
	}
	if _, err := w.Write(body); err != nil {
		return "", err
	}
	// Close writes the final dot and reads the reply. The writes before it may sit in the
	// client's buffer, so only a fault here can come after the server saw the whole
	// message; a fault before it means the message was not accepted. (A fault while Close
	// flushes the buffer is counted as uncertain too: the dot may have left in part.)
	resp, err := w.CloseWithResponse()
	if err != nil {
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			err = errAfterDot{err}
		}
		return "", err
	}
	id := "-"
	if _, after, ok := strings.Cut(resp.StatusText, "queued as "); ok {
		if f := strings.Fields(after); len(f) > 0 {
			id = f[0]
		}
	}
	return id, nil
}

// permanent reports a 5xx refusal, which a retry would only repeat.
func permanent(err error) bool {
	var se *smtp.SMTPError
	return errors.As(err, &se) && se.Code >= 500
}

func isUncertain(err error) bool {
	var e errAfterDot
	return errors.As(err, &e)
}

// outcome is an -outcomes line's result: "ok ID", "refused CODE", "failed conn" or
// "unknown conn".
func outcome(id string, err error) string {
	var se *smtp.SMTPError
	switch {
	case err == nil:
		return "ok " + id
	case errors.As(err, &se):
		return "refused " + strconv.Itoa(se.Code)
	case isUncertain(err):
		return "unknown conn"
	}
	return "failed conn"
}

func (s *session) close() {
	if s.c != nil {
		s.c.Close()
		s.c = nil
	}
}

// header is message i's header. Its fields have a fixed width, so that every message has
// the same size and one body fits all.
func header(o options, i int) []byte {
	return fmt.Appendf(nil, "From: %s\r\nTo: %s\r\nSubject: relay-load %08d\r\nDate: %s\r\n"+
		"Message-ID: <%08d.%d@relay-load.invalid>\r\nMIME-Version: 1.0\r\n"+
		"Content-Type: text/plain; charset=us-ascii\r\n\r\n",
		o.headerFrom, o.to[0], i, o.start.Format(time.RFC1123Z), i, o.start.UnixNano())
}

// makeBody returns CRLF lines of at most 78 octets filling the message to o.size bytes
// (RFC 5322 §2.1.1). A header longer than that gets an empty body.
func makeBody(o options) []byte {
	size := o.size - len(header(o, 0))
	var b []byte
	line := bytes.Repeat([]byte("relay-load "), 7)
	for rem := size; rem >= 2; rem = size - len(b) {
		k := min(76, rem-2)
		if rem-(k+2) == 1 {
			k-- // leave a whole empty line rather than a stray byte
		}
		b = append(append(b, line[:k]...), '\r', '\n')
	}
	return b
}

func errorKey(err error) string {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return strconv.Itoa(se.Code)
	}
	return "conn"
}

// percentile is the nearest-rank percentile p of sorted.
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (p*len(sorted)+99)/100 - 1
	return sorted[max(i, 0)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
