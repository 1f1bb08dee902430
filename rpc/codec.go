// Package rpc is the gRPC protocol between agents and servers: the message
// types, hand-written service descriptors and a JSON codec, so that both
// sides share one definition without generated code. Agents call the Server
// service (register, watch their kernels, report status); servers call the
// Agent service (exec into a kernel, read its logs).
package rpc

import (
	"encoding/json"

	"google.golang.org/grpc/encoding"
)

// codecName is the gRPC content subtype of corral's JSON messages.
const codecName = "json"

// jsonCodec is encoding/json as is. It must keep ignoring unknown fields
// (no DisallowUnknownFields): that is how a peer one protocol version
// older reads a newer peer's messages (docs/upgrades.md).
type jsonCodec struct{}

func (jsonCodec) Marshal(v any) ([]byte, error)      { return json.Marshal(v) }
func (jsonCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }
func (jsonCodec) Name() string                       { return codecName }

func init() { encoding.RegisterCodec(jsonCodec{}) }
