//! The embedding service of one model on one device: texts in, vectors out.

use std::path::Path;
use std::sync::mpsc;

use tracing::info;

use crate::backend::{self, Backend, DeviceChoice, Packed, Precision};
use crate::tokenize::Tokens;
use crate::{EmbedError, ModelFiles, Weights};

type Reply = Result<Vec<f32>, EmbedError>;

struct Request {
    batch: Packed,
    reply: mpsc::Sender<Reply>,
}

/// A loaded model. Tokenizing happens on the caller's thread; the encoder
/// runs on one dedicated thread that owns the backend (and so the CUDA
/// context and the weights uploaded to the device), fed over a channel.
/// Dropping it stops that thread and waits for it, so the device's memory
/// and context are released before the drop returns (and never race the
/// process's exit).
pub struct Embedder {
    tokens: Tokens,
    tx: mpsc::Sender<Request>,
    thread: Option<std::thread::JoinHandle<()>>,
    device: String,
    dim: usize,
    max_tokens: usize,
}

impl Embedder {
    /// Loads the model in `dir` onto the device `choice` picks; a GPU
    /// stores GEMM inputs at `precision` (the CPU computes in fp32).
    pub fn load(dir: &Path, choice: DeviceChoice, precision: Precision) -> Result<Embedder, EmbedError> {
        crate::isa::Isa::choose_from_env().map_err(EmbedError::Setting)?;
        let files = ModelFiles::open(dir)?;
        let tokens = Tokens::load(&files)?;
        let weights = Weights::load(&files)?;
        let dim = files.config.hidden_size;
        let (tx, rx) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("batchmill-embed".into())
            .spawn(move || {
                let backend = match backend::open(choice, weights, precision) {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok((backend.device(), backend.max_tokens())));
                serve(backend, &rx);
            })
            .map_err(|e| EmbedError::Device { device: "thread".into(), message: e.to_string() })?;
        let (device, max_tokens) = ready_rx.recv().map_err(|_| EmbedError::Stopped)??;
        info!(model = %dir.display(), %device, max_seq_length = files.max_seq_length, "embedding model loaded");
        Ok(Embedder { tokens, tx, thread: Some(thread), device, dim, max_tokens })
    }

    /// The device it runs on.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Length of each embedding.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Tokens the model sees for `texts`, after truncation.
    pub fn count_tokens(&self, texts: &[&str]) -> Result<usize, EmbedError> {
        Ok(self.tokens.encode(texts)?.iter().map(Vec::len).sum())
    }

    /// The embedding of each text, in order. Texts are sorted by length and
    /// packed into chunks of at most the backend's token budget, so no
    /// compute goes to padding.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let ids = self.tokens.encode(texts)?;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut chunks: Vec<(Vec<usize>, mpsc::Receiver<Reply>)> = Vec::new();
        let mut batch = Packed::default();
        let mut members = Vec::new();
        for (n, &i) in order.iter().enumerate() {
            batch.push(&ids[i]);
            members.push(i);
            let next = order.get(n + 1).map_or(usize::MAX, |&j| ids[j].len());
            if n + 1 == order.len() || batch.ids.len() + next > self.max_tokens {
                let (reply, rx) = mpsc::channel();
                let request = Request { batch: std::mem::take(&mut batch), reply };
                self.tx.send(request).map_err(|_| EmbedError::Stopped)?;
                chunks.push((std::mem::take(&mut members), rx));
            }
        }
        let mut out = vec![Vec::new(); ids.len()];
        for (members, rx) in chunks {
            let vectors = rx.recv().map_err(|_| EmbedError::Stopped)??;
            for (i, v) in members.into_iter().zip(vectors.chunks_exact(self.dim)) {
                out[i] = v.to_vec();
            }
        }
        Ok(out)
    }
}

impl Drop for Embedder {
    fn drop(&mut self) {
        // Closing the channel ends `serve`; the thread then drops the backend.
        self.tx = mpsc::channel().0;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(mut backend: Box<dyn Backend>, rx: &mpsc::Receiver<Request>) {
    while let Ok(request) = rx.recv() {
        let _ = request.reply.send(backend.embed(&request.batch));
    }
}
