package main

import "errors"

// runEcho is replaced by the engineer who owns this file.
func runEcho(args []string) error { return errors.New("echo: not built yet") }
