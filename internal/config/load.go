// Package config owns the relay's TOML configuration (SPEC §3): decoding it, filling the
// defaults, validating every key and loading the files it names (DKIM keys, TLS
// certificate, upstream password), and the summary `relay check` prints. A Config that
// Load returns is complete: the rest of the relay never re-parses its strings. Load never
// opens a network connection and never logs; secrets never appear in its errors or summary.
package config

import (
	"encoding"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Load reads, decodes and validates the configuration file at path. On failure the error
// is an *Errors listing every problem found, each with its key and file position.
func Load(path string) (*Config, error) {
	ps := &problems{file: path}
	data, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		ps.add("", "cannot read: %v", err)
		return nil, ps.err()
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		ps.add("", "%v", err)
		return nil, ps.err()
	}
	c := Defaults()
	c.Path, c.Dir = abs, filepath.Dir(abs)
	if decode(string(data), c, ps) {
		validate(c, ps)
	}
	if err := ps.err(); err != nil {
		return nil, err
	}
	return c, nil
}

// Defaults is a Config with every SPEC §3 default that does not depend on other keys;
// decoding overwrites what the file sets. Fresh slices each time: decoding may reuse them.
// It is the one place defaults live: the stages take a Config as Load leaves it.
func Defaults() *Config {
	return &Config{
		SMTP: SMTP{
			Listen:           "127.0.0.1:2525",
			MaxMessageBytes:  26214400,
			MaxRecipients:    100,
			Timeout:          Duration{5 * time.Minute},
			BareNewline:      "normalize",
			MaxHeaderBytes:   1 << 20,
			MaxConnections:   1000,
			MaxConnectionsIP: 50,
			AuthFailures:     5,
			// Only when the key is absent: an explicit [] means AUTH is always required.
			AllowNetworks: []string{"127.0.0.0/8", "::1/128"},
		},
		Sender: Sender{
			DisplayName:     "{name}",
			ReplyToOriginal: true,
			OriginalHeader:  "X-Original-From", // an explicit "" omits the header
		},
		SPF: SPF{
			Enabled:     true,
			Timeout:     Duration{5 * time.Second},
			OnTempError: "fallback",
			CacheMinTTL: Duration{time.Minute},
			CacheMaxTTL: Duration{time.Hour},
		},
		DNS:      DNS{Timeout: Duration{2 * time.Second}},
		DKIM:     DKIM{Selector: "default", DelegationCheck: true},
		Upstream: Upstream{TLS: "starttls", MaxConnections: 8, Timeout: Duration{time.Minute}},
		Queue: Queue{
			Mode:     "spool",
			Dir:      "./spool",
			MaxAge:   Duration{72 * time.Hour},
			RetryMin: Duration{30 * time.Second},
			RetryMax: Duration{30 * time.Minute},
		},
		Log: Log{Format: "text", Level: "info"},
	}
}

// decode fills c from src. It decodes key by key (through toml.Primitive) rather than in
// one call, because one call stops at the first wrong type and cannot tell which
// [[users]] element a key belongs to: this way every wrong type and unknown key is
// reported, each under its own path. It reports false when the file is not TOML at all.
func decode(src string, c *Config, ps *problems) bool {
	var top map[string]toml.Primitive
	md, err := toml.Decode(src, &top)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			ps.list = append(ps.list, Problem{
				Pos:  fmt.Sprintf("%s:%d:%d", ps.file, pe.Position.Line, pe.Position.Col),
				Line: pe.Position.Line,
				Key:  pe.LastKey,
				Msg:  pe.Message,
				col:  pe.Position.Col,
			})
		} else {
			ps.add("", "%v", err)
		}
		return false
	}
	ps.pos = locate(src)
	d := decoder{md: &md, ps: ps}
	d.fields(top, reflect.ValueOf(c).Elem(), "")
	return true
}

type decoder struct {
	md *toml.MetaData
	ps *problems
}

var textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()

// fields decodes the keys of one table into the struct rv, whose `toml` tags name them.
func (d *decoder) fields(m map[string]toml.Primitive, rv reflect.Value, path string) {
	index := map[string]int{}
	for i := range rv.NumField() {
		if tag := rv.Type().Field(i).Tag.Get("toml"); tag != "" && tag != "-" {
			index[tag] = i
		}
	}
	for key, prim := range m {
		i, ok := index[key]
		if !ok {
			if near := closest(key, index); near != "" {
				d.ps.add(join(path, key), "unknown key (did you mean %q?)", near)
			} else {
				d.ps.add(join(path, key), "unknown key")
			}
			continue
		}
		d.value(prim, rv.Field(i), join(path, key))
	}
}

func (d *decoder) value(prim toml.Primitive, fv reflect.Value, path string) {
	t := fv.Type()
	switch {
	case t.Kind() == reflect.Struct && !reflect.PointerTo(t).Implements(textUnmarshaler):
		// Checked first: decoding a non-table into a map succeeds, leaving it empty.
		var raw any
		_ = d.md.PrimitiveDecode(prim, &raw) // into any: cannot fail
		var m map[string]toml.Primitive
		if _, ok := raw.(map[string]any); !ok || d.md.PrimitiveDecode(prim, &m) != nil {
			d.ps.add(path, "must be a table, not %s", describe(raw))
			return
		}
		d.fields(m, fv, path)
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Struct:
		var items []toml.Primitive
		if d.md.PrimitiveDecode(prim, &items) != nil {
			d.ps.add(path, "must be an array of tables ([[%s]]), not %s", path, d.kind(prim))
			return
		}
		out := reflect.MakeSlice(t, len(items), len(items))
		for i, item := range items {
			d.value(item, out.Index(i), fmt.Sprintf("%s[%d]", path, i))
		}
		fv.Set(out)
	default:
		// A fresh value, so a failed decode leaves the default in place and a decoded
		// slice never shares the default's backing array.
		nv := reflect.New(t)
		if err := d.md.PrimitiveDecode(prim, nv.Interface()); err != nil {
			var pe toml.ParseError
			if errors.As(err, &pe) { // from UnmarshalText (Duration) or a range check
				d.ps.add(path, "%s", pe.Message)
			} else {
				d.ps.add(path, "must be %s, not %s", want(t), d.kind(prim))
			}
			return
		}
		fv.Set(nv.Elem())
	}
}

// kind describes a TOML value for a type error: "an integer (5)".
func (d *decoder) kind(prim toml.Primitive) string {
	var v any
	if d.md.PrimitiveDecode(prim, &v) != nil {
		return "that"
	}
	return describe(v)
}

func describe(v any) string {
	switch v := v.(type) {
	case string:
		return fmt.Sprintf("a string (%q)", v)
	case int64:
		return fmt.Sprintf("an integer (%d)", v)
	case float64:
		return fmt.Sprintf("a float (%v)", v)
	case bool:
		return fmt.Sprintf("a boolean (%v)", v)
	case time.Time:
		return "a date-time"
	case map[string]any:
		return "a table"
	case []map[string]any:
		return "an array of tables"
	case []any:
		for _, e := range v {
			if _, ok := e.(string); !ok {
				return "an array holding " + describe(e)
			}
		}
		return "an array"
	}
	return fmt.Sprintf("%T", v)
}

func want(t reflect.Type) string {
	switch {
	case t == reflect.TypeFor[Duration]():
		return `a duration string like "30s", "5m" or "72h"`
	case t.Kind() == reflect.String:
		return "a string"
	case t.Kind() == reflect.Bool:
		return "true or false"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Int64:
		return "an integer"
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.String:
		return `an array of strings (["a", "b"])`
	}
	return strings.ToLower(t.Kind().String())
}

// closest returns the known key within two edits of key (a typo, a wrong case), or "".
func closest[T any](key string, known map[string]T) string {
	best, bestDist := "", 3
	for k := range known {
		if d := distance(strings.ToLower(key), k); d < bestDist || d == bestDist && k < best {
			best, bestDist = k, d
		}
	}
	if bestDist > 2 || bestDist >= len(key) {
		return ""
	}
	return best
}

// distance is the Levenshtein edit distance of a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
