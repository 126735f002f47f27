package cni

import (
	"fmt"
	"os"
	"path/filepath"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newLogger logs JSON lines to the configured file, appending, each with
// the instance (nodes may share one file) and the pid. stdout is
// the CNI protocol's channel, so when the file cannot be opened the logger
// writes to stderr (the runtime keeps it with the error) and says why.
func newLogger(s *Settings) *zap.Logger {
	level, err := zapcore.ParseLevel(s.LogLevel)
	if err != nil {
		level = zapcore.InfoLevel
	}
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	out, ferr := openLog(s.LogFile)
	if ferr != nil {
		out = zapcore.Lock(os.Stderr)
	}
	core := zapcore.NewCore(zapcore.NewJSONEncoder(enc), out, level)
	log := zap.New(core).With(zap.String("instance", s.InstanceID), zap.Int("pid", os.Getpid()))
	if ferr != nil {
		log.Warn("cannot open the log file; logging to stderr", zap.Error(ferr))
	}
	return log
}

func openLog(path string) (zapcore.WriteSyncer, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create log directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open log file: %w", err)
	}
	return zapcore.Lock(f), nil
}
