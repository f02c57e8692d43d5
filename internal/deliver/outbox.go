package deliver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// outboxMode is the mode of the files in an outbox: the relay's user writes, its group
// (a pick-up process, an operator) reads.
const outboxMode = 0o640

// Outbox is the upstream "file:DIR": each message is written as DIR/<id>.eml, byte for byte,
// with its envelope beside it as DIR/<id>.json ({"from", "to", "received"}). Every recipient
// is accepted. Both files appear whole or not at all, and the envelope first: whoever sees
// <id>.eml finds <id>.json. Ids sort by the time of writing.
type Outbox struct {
	dir string
	now func() time.Time
}

// NewOutbox returns an Outbox writing to dir, which it creates if needed.
func NewOutbox(dir string) (*Outbox, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("outbox %s: %w", dir, err)
	}
	return &Outbox{dir: dir, now: time.Now}, nil
}

// envelope is the content of <id>.json.
type envelope struct {
	From     string   `json:"from"`
	To       []string `json:"to"`
	Received string   `json:"received"` // RFC 3339
}

// Send writes the message and its envelope, durably, before it returns.
func (o *Outbox) Send(ctx context.Context, from string, to []string, data []byte) ([]RcptResult, error) {
	if len(to) == 0 {
		return nil, errors.New("deliver: no recipients")
	}
	if err := ctx.Err(); err != nil {
		return nil, fault(fmt.Errorf("outbox %s: %w", o.dir, context.Cause(ctx)))
	}
	now := o.now()
	var rnd [4]byte
	rand.Read(rnd[:])
	id := now.UTC().Format("20060102T150405.000000000Z") + "-" + hex.EncodeToString(rnd[:])
	env, err := json.Marshal(envelope{From: from, To: to, Received: now.Format(time.RFC3339)})
	if err != nil {
		return nil, localFault(fmt.Errorf("outbox %s: envelope: %w", id, err))
	}
	if err := o.write(id+".json", append(env, '\n')); err != nil {
		return nil, localFault(fmt.Errorf("outbox %s: %w", id, err))
	}
	if err := o.write(id+".eml", data); err != nil {
		// Whatever got written goes: the caller sends again, and an .eml must not stay
		// without its .json.
		os.Remove(filepath.Join(o.dir, id+".eml"))
		os.Remove(filepath.Join(o.dir, id+".json"))
		return nil, localFault(fmt.Errorf("outbox %s: %w", id, err))
	}
	res := make([]RcptResult, len(to))
	for i, rcpt := range to {
		res[i] = RcptResult{Rcpt: rcpt, Code: 250}
	}
	return res, nil
}

// write creates dir/name atomically and durably: a temporary file in the same directory,
// written, fsynced and renamed, then the directory fsynced so the rename survives a crash.
// The directory is synced after each file, so that after a crash the .eml never exists
// without its .json.
func (o *Outbox) write(name string, data []byte) (err error) {
	f, err := os.CreateTemp(o.dir, ".tmp-*") // dot and no suffix: no reader takes it for mail
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err = f.Chmod(outboxMode); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(f.Name(), filepath.Join(o.dir, name)); err != nil {
		return err
	}
	return syncDir(o.dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// Close does nothing: an Outbox holds no resources between messages.
func (o *Outbox) Close() error { return nil }

// sendAll is Send: an outbox refuses no recipient.
func (o *Outbox) sendAll(ctx context.Context, from string, to []string, data []byte) ([]RcptResult, error) {
	return o.Send(ctx, from, to, data)
}
