// Package framework is what the end-to-end tests (e2e/tests) share: the
// test bed a test runs on (Bed, with kubectl), polling, the echo pods and
// Services the stories use, a pod's sandbox to run a client in, node
// agents and lb-controllers run as host processes, load through the load
// balancer, and readiness-gate checks. A helper takes the test's
// *testing.T (or a context) and the *Bed; the test package's TestMain
// brings the bed up and hands it out, this package keeps no state of its
// own.
package framework
