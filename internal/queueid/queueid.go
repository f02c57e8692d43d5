// Package queueid owns the format of message ids: the id a client sees in "250 ... queued
// as ID", the Received header's id, the spool file name, and the log key.
package queueid

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"strings"
	"time"
)

// The "extended hex" alphabet sorts like the bytes it encodes (RFC 4648 §7).
var encoding = base32.HexEncoding.WithPadding(base32.NoPadding)

// New returns an id: 16 lower-case base32hex characters, 4 bytes of Unix seconds then 6
// random bytes, so ids sort by arrival and do not collide across restarts or instances.
func New(now time.Time) string {
	var b [10]byte
	binary.BigEndian.PutUint32(b[:4], uint32(now.Unix()))
	rand.Read(b[4:])
	return strings.ToLower(encoding.EncodeToString(b[:]))
}
