package dkimkey

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"strings"
)

// RecordError is a DKIM key record that ParseRecord refuses, and the tag at fault.
type RecordError struct {
	// Tag is the name of the tag at fault ("v", "k", "h", "s", "p", or one given twice),
	// or the text of a part that is not tag=value at all.
	Tag string
	// Reason says what is wrong, naming the tag: "h= does not allow sha256".
	Reason string
	// Err is the error of the decoder (base64, x509) when there is one.
	Err error
}

func (e *RecordError) Error() string {
	if e.Err != nil {
		return e.Reason + ": " + e.Err.Error()
	}
	return e.Reason
}

func (e *RecordError) Unwrap() error { return e.Err }

// ParseRecord reads the public key of a DKIM key record (RFC 6376 §3.6.1, RFC 8463 §4.2),
// the text Record writes, refusing records a verifier would not use for the relay's
// relaxed/sha256 signatures. The error is a *RecordError naming the tag at fault.
func ParseRecord(txt string) (crypto.PublicKey, error) {
	tags, err := Tags(txt)
	if err != nil {
		return nil, err
	}
	if v, ok := tags["v"]; ok && v != "DKIM1" {
		return nil, &RecordError{Tag: "v", Reason: fmt.Sprintf("version %q", v)}
	}
	if h, ok := tags["h"]; ok && !listHas(h, "sha256") {
		return nil, &RecordError{Tag: "h", Reason: "h= does not allow sha256"}
	}
	if s, ok := tags["s"]; ok && !listHas(s, "email") && !listHas(s, "*") {
		return nil, &RecordError{Tag: "s", Reason: "s= does not allow email"}
	}
	p, ok := tags["p"]
	if !ok {
		return nil, &RecordError{Tag: "p", Reason: "no p= tag"}
	}
	p = strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\r' || r == '\n' {
			return -1
		}
		return r
	}, p)
	if p == "" {
		return nil, &RecordError{Tag: "p", Reason: "key revoked (empty p=)"}
	}
	der, err := base64.StdEncoding.DecodeString(p)
	if err != nil {
		return nil, &RecordError{Tag: "p", Reason: "p=", Err: err}
	}
	switch k := tags["k"]; k {
	case "", "rsa":
		pub, err := x509.ParsePKIXPublicKey(der)
		if err != nil {
			// RFC 6376 erratum 3017: some publish a bare RSAPublicKey.
			rsaPub, err2 := x509.ParsePKCS1PublicKey(der)
			if err2 != nil {
				return nil, &RecordError{Tag: "p", Reason: "p=", Err: err}
			}
			return rsaPub, nil
		}
		rsaPub, ok := pub.(*rsa.PublicKey)
		if !ok {
			return nil, &RecordError{Tag: "p", Reason: fmt.Sprintf("p=: %T is not an RSA key", pub)}
		}
		return rsaPub, nil
	case "ed25519":
		if len(der) != ed25519.PublicKeySize {
			return nil, &RecordError{Tag: "p", Reason: fmt.Sprintf("p=: Ed25519 key of %d bytes", len(der))}
		}
		return ed25519.PublicKey(der), nil
	default:
		return nil, &RecordError{Tag: "k", Reason: fmt.Sprintf("key type %q", k)}
	}
}

// Tags splits a DKIM key record into its tags (RFC 6376 §3.2 tag-list: name=value
// separated by ";", white space around both trimmed), for ParseRecord and for readers
// of the tags it does not use (t=, the DNS doctor). The error is a *RecordError naming a
// part that is not tag=value or a tag given twice.
func Tags(txt string) (map[string]string, error) {
	tags := map[string]string{}
	for _, part := range strings.Split(txt, ";") {
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			return nil, &RecordError{Tag: part, Reason: fmt.Sprintf("malformed tag %q", part)}
		}
		k = strings.TrimSpace(k)
		if _, dup := tags[k]; dup {
			return nil, &RecordError{Tag: k, Reason: fmt.Sprintf("duplicate tag %q", k)}
		}
		tags[k] = strings.TrimSpace(v)
	}
	return tags, nil
}

// ListHas reports whether a colon-separated tag value (h=, s=, t=) lists want, in any
// case.
func ListHas(list, want string) bool { return listHas(list, want) }

func listHas(list, want string) bool {
	for _, v := range strings.Split(list, ":") {
		if strings.EqualFold(strings.TrimSpace(v), want) {
			return true
		}
	}
	return false
}
