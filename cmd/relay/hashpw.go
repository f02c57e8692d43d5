package main

import (
	"bufio"
	"fmt"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

func cmdHashPassword(e env) int {
	fs := e.flags("hash-password")
	if code, ok := e.parse(fs); !ok {
		return code
	}
	line, err := bufio.NewReader(e.stdin).ReadString('\n')
	if err != nil && line == "" {
		fmt.Fprintln(e.stderr, "relay hash-password: no password on standard input")
		return 1
	}
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		fmt.Fprintln(e.stderr, "relay hash-password: empty password")
		return 1
	}
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.DefaultCost)
	if err != nil {
		fmt.Fprintf(e.stderr, "relay hash-password: %v\n", err)
		return 1
	}
	fmt.Fprintln(e.stdout, string(h))
	return 0
}
