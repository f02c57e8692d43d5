package smtp

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"time"
)

type EnhancedCode [3]int

// SMTPError specifies the error code, enhanced error code (if any) and
// message returned by the server.
type SMTPError struct {
	Code         int
	EnhancedCode EnhancedCode
	Message      string
}

// NoEnhancedCode is used to indicate that enhanced error code should not be
// included in response.
//
// Note that RFC 2034 requires an enhanced code to be included in all 2xx, 4xx
// and 5xx responses. This constant is exported for use by extensions, you
// should probably use EnhancedCodeNotSet instead.
var NoEnhancedCode = EnhancedCode{-1, -1, -1}

// EnhancedCodeNotSet is a nil value of EnhancedCode field in SMTPError, used
// to indicate that backend failed to provide enhanced status code. X.0.0 will
// be used (X is derived from error code).
var EnhancedCodeNotSet = EnhancedCode{0, 0, 0}

func (err *SMTPError) Error() string {
	s := fmt.Sprintf("SMTP error %03d", err.Code)
	if err.Message != "" {
		s += ": " + err.Message
	}
	return s
}

func (err *SMTPError) Temporary() bool {
	return err.Code/100 == 4
}

var ErrDataTooLarge = &SMTPError{
	Code:         552,
	EnhancedCode: EnhancedCode{5, 3, 4},
	Message:      "Maximum message size exceeded",
}

type dataReader struct {
	r     *bufio.Reader
	state int

	limited bool
	n       int64 // Maximum bytes remaining

	// relay patch: the read deadline is moved forward after every line, so that a
	// slow but steady client is not cut while a silent one still is.
	conn    net.Conn
	timeout time.Duration
	sawLine bool // a line end was consumed since the deadline was last moved
}

func newDataReader(c *Conn) *dataReader {
	dr := &dataReader{
		r:       c.text.R,
		conn:    c.conn,
		timeout: c.server.ReadTimeout,
	}

	if c.server.MaxMessageBytes > 0 {
		dr.limited = true
		dr.n = int64(c.server.MaxMessageBytes)
	}

	return dr
}

// Read returns the message content: dot-unstuffed, up to (not including) the
// end-of-data line.
//
// relay patch: the state machine is exact where upstream's (taken from
// net/textproto) is not for bare CRs. Only <CRLF>.<CRLF> (or ".\r\n" as the
// very first line) ends the data, and every other octet is content:
//   - a CR followed by another CR stays a possible start of <CRLF> (upstream
//     fell back to mid-line state, so "last\r\r\n.\r\n" never ended);
//   - ".\r" followed by anything but LF is an unstuffed dot and a CR (upstream
//     dropped the CR as well);
//   - a bare LF is content and never starts a line ("\n.\r\n" is data).
//
// Runs of ordinary octets are copied from the buffer at once rather than one
// ReadByte at a time, and Read returns what it has instead of blocking for more.
func (r *dataReader) Read(b []byte) (n int, err error) {
	if r.limited {
		if r.n <= 0 {
			return 0, ErrDataTooLarge
		}
		if int64(len(b)) > r.n {
			b = b[0:r.n]
		}
	}
	if r.sawLine && r.conn != nil && r.timeout > 0 {
		r.sawLine = false
		if err := r.conn.SetReadDeadline(time.Now().Add(r.timeout)); err != nil {
			return 0, err
		}
	}

	const (
		stateBeginLine = iota // beginning of line; initial state; must be zero
		stateDot              // read . at beginning of line
		stateDotCR            // read .\r at beginning of line
		stateCR               // read \r (possibly at end of line)
		stateData             // reading data in middle of line
		stateEOF              // reached .\r\n end marker line
	)
	for n < len(b) && r.state != stateEOF {
		buffered := r.r.Buffered()
		if buffered == 0 && n > 0 {
			break // return what we have rather than wait for the client
		}
		if r.state == stateData && buffered > 0 {
			if buffered > len(b)-n {
				buffered = len(b) - n
			}
			span, _ := r.r.Peek(buffered)
			i := bytes.IndexByte(span, '\r')
			if i < 0 {
				i = len(span)
			}
			if i > 0 {
				if !r.sawLine && bytes.IndexByte(span[:i], '\n') >= 0 {
					r.sawLine = true
				}
				n += copy(b[n:], span[:i])
				r.r.Discard(i)
				continue
			}
		}
		var c byte
		c, err = r.r.ReadByte()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			break
		}
		if c == '\n' {
			r.sawLine = true
		}
		switch r.state {
		case stateBeginLine:
			if c == '.' {
				r.state = stateDot
				continue
			}
			if c == '\r' {
				r.state = stateCR
				break
			}
			r.state = stateData
		case stateDot:
			if c == '\r' {
				r.state = stateDotCR
				continue
			}
			// RFC 5321 section 4.5.2: the leading dot is removed.
			r.state = stateData
		case stateDotCR:
			if c == '\n' {
				r.state = stateEOF
				continue
			}
			// Not the end marker: the dot was stuffing, the CR is content, and c
			// is read again after it.
			r.r.UnreadByte()
			c = '\r'
			r.state = stateCR
		case stateCR:
			if c == '\n' {
				r.state = stateBeginLine
				break
			}
			if c != '\r' {
				r.state = stateData
			}
		case stateData:
			if c == '\r' {
				r.state = stateCR
			}
		}
		b[n] = c
		n++
	}
	if err == nil && r.state == stateEOF {
		err = io.EOF
	}

	if r.limited {
		r.n -= int64(n)
	}
	return
}
