package main

import "errors"

// runUp is replaced by the engineer who owns this file.
func runUp(args []string) error { return errors.New("up: not built yet") }
