package config

import (
	"fmt"
	"sort"
	"strings"
)

// Problem is one thing wrong with a configuration file.
type Problem struct {
	Pos  string // "file:line:col" when the file gives one, else "file"
	Line int    // 0 when unknown
	Key  string // e.g. "dkim.keys[1].private_key"; "" for file-level problems
	Msg  string

	col int // orders problems on one line
}

func (p Problem) String() string {
	if p.Key == "" {
		return p.Pos + ": " + p.Msg
	}
	return p.Pos + ": " + p.Key + ": " + p.Msg
}

// Errors is every problem Load found, in file order, so an admin fixes them in one pass
// instead of one per run. Load returns no other error type.
type Errors struct {
	Problems []Problem
}

// Error lists one problem a line: "file:line:col: key: message".
func (e *Errors) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// problems collects Problems while a file is decoded and validated.
type problems struct {
	file string
	pos  positions
	list []Problem
}

// add records a problem at key, positioned at the key or, when it is absent from the file,
// at its nearest enclosing table.
func (ps *problems) add(key, format string, args ...any) {
	ps.addAt(key, key, format, args...)
}

// addAt records a problem of key positioned at another key, near: a missing key is best
// shown where the key that needs it is.
func (ps *problems) addAt(key, near, format string, args ...any) {
	p := Problem{Pos: ps.file, Key: key, Msg: fmt.Sprintf(format, args...)}
	if at, ok := ps.pos.find(near); ok {
		p.Pos = fmt.Sprintf("%s:%d:%d", ps.file, at.line, at.col)
		p.Line, p.col = at.line, at.col
	}
	ps.list = append(ps.list, p)
}

// err returns the collected problems sorted by position (those without one last), or nil.
func (ps *problems) err() error {
	if len(ps.list) == 0 {
		return nil
	}
	list := append([]Problem(nil), ps.list...)
	sort.SliceStable(list, func(i, j int) bool {
		a, b := list[i], list[j]
		if (a.Line == 0) != (b.Line == 0) {
			return b.Line == 0
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		if a.col != b.col {
			return a.col < b.col
		}
		return a.Key < b.Key
	})
	return &Errors{Problems: list}
}
