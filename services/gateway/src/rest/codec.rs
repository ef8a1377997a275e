//! A tonic codec for `prost_reflect::DynamicMessage`, so REST requests call
//! the gRPC services with messages built from JSON.

use bytes::BufMut;
use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// A request built from JSON: the message, and the encoding of its bulk
/// fields, which follows it on the wire.
pub struct Transcoded {
    pub message: DynamicMessage,
    pub tail: Vec<u8>,
}

/// Encodes dynamic requests and decodes responses of one message type.
pub struct DynamicCodec {
    response: MessageDescriptor,
}

impl DynamicCodec {
    pub fn new(response: MessageDescriptor) -> DynamicCodec {
        DynamicCodec { response }
    }
}

impl Codec for DynamicCodec {
    type Encode = Transcoded;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> DynamicEncoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> DynamicDecoder {
        DynamicDecoder(self.response.clone())
    }
}

pub struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = Transcoded;
    type Error = Status;

    fn encode(&mut self, item: Transcoded, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.message.encode(dst).map_err(|e| Status::internal(format!("encoding request: {e}")))?;
        dst.put_slice(&item.tail);
        Ok(())
    }
}

pub struct DynamicDecoder(MessageDescriptor);

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        DynamicMessage::decode(self.0.clone(), src)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding response: {e}")))
    }
}
