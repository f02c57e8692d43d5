// Command relay is the sender-rewriting SMTP relay: one binary whose subcommands serve,
// preview, check and operate it (SPEC §2). This package only parses flags, loads the
// configuration and wires the stages; the work lives in internal/.
package main

import "os"

func main() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }
