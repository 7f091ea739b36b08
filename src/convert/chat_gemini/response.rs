//! A whole Gemini answer (or error), rewritten as a Chat Completions answer; and the fields of a
//! Gemini answer the stream reads too.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{call_id, compact_json, completion_id, finish_reason, google_error};
use crate::convert::ConvertError;
use crate::convert::chat_out::{
    ChatUsage, Completion, CompletionChoice, Message, ToolCall, unix_now, upstream_message,
};
use crate::usage::TokenUsage;
use crate::usage::gemini::UsageMetadata;

/// A complete Gemini answer (a `GenerateContentResponse`, or Code Assist's envelope
/// `{"response": {…}, "traceId": …}`) → a `chat.completion` JSON with `model` = `client_model`;
/// with its usage.
///
/// An error means the body is not such an answer (an error body, say): the upstream's fault,
/// not the client's.
pub fn response_from_gemini(body: &[u8], client_model: &str) -> Result<(Bytes, TokenUsage), ConvertError> {
    response_from_gemini_at(body, client_model, unix_now())
}

/// [`response_from_gemini`] with the answer's `created` (Unix seconds) given.
pub fn response_from_gemini_at(
    body: &[u8],
    client_model: &str,
    created: i64,
) -> Result<(Bytes, TokenUsage), ConvertError> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ConvertError("the upstream answer is not a JSON object".to_owned()));
    }
    let answer: Answer<'_> = serde_json::from_slice(body)
        .map_err(|e| ConvertError(format!("the upstream answer is not a Gemini response: {e}")))?;
    let answer = answer.unwrap_envelope();
    if let Some(error) = answer.error {
        return Err(ConvertError(format!(
            "the upstream answer is an error, not a Gemini response: {}",
            error.message.as_deref().unwrap_or_default()
        )));
    }
    let usage = answer
        .usage_metadata
        .as_ref()
        .map(UsageMetadata::to_usage)
        .unwrap_or_default();

    let mut gathered: Vec<Gathered<'_>> = Vec::with_capacity(answer.candidates.len().max(1));
    for (position, candidate) in answer.candidates.into_iter().enumerate() {
        gathered.push(Gathered::of(position, candidate));
    }
    if gathered.is_empty() {
        // No candidate: a refused prompt (or an empty answer).
        let blocked = answer
            .prompt_feedback
            .is_some_and(|f| f.block_reason.is_some_and(|r| !r.is_empty()));
        gathered.push(Gathered {
            index: 0,
            content: None,
            reasoning: None,
            calls: Vec::new(),
            finish: if blocked { "content_filter" } else { "stop" },
        });
    }
    gathered.sort_by_key(|g| g.index);

    let id = completion_id(answer.response_id.as_deref());
    let choices = gathered
        .iter()
        .map(|g| {
            let message = Message {
                role: "assistant",
                content: g.content.as_deref().map(Cow::Borrowed),
                reasoning_content: g.reasoning.as_deref().map(Cow::Borrowed),
                refusal: None,
                tool_calls: g
                    .calls
                    .iter()
                    .map(|c| ToolCall::function(Cow::Borrowed(&c.id), Cow::Borrowed(&c.name), &c.arguments))
                    .collect(),
            };
            CompletionChoice::new(g.index, message, g.finish)
        })
        .collect();
    let completion = Completion::with_choices(&id, created, client_model, choices, ChatUsage::new(&usage, true));
    let json =
        serde_json::to_vec(&completion).map_err(|e| ConvertError(format!("the answer could not be written: {e}")))?;
    Ok((Bytes::from(json), usage))
}

/// What one candidate says.
struct Gathered<'a> {
    index: u32,
    content: Option<Cow<'a, str>>,
    reasoning: Option<Cow<'a, str>>,
    calls: Vec<Call<'a>>,
    finish: &'static str,
}

struct Call<'a> {
    id: Cow<'a, str>,
    name: Cow<'a, str>,
    arguments: Cow<'a, str>,
}

impl<'a> Gathered<'a> {
    fn of(position: usize, candidate: Candidate<'a>) -> Self {
        let mut content: Option<Cow<'a, str>> = None;
        let mut reasoning: Option<Cow<'a, str>> = None;
        let mut calls = Vec::new();
        for part in candidate.content.map(|c| c.parts).unwrap_or_default() {
            if let Some(call) = part.function_call {
                calls.push(Call {
                    id: call
                        .id
                        .filter(|id| !id.is_empty())
                        .unwrap_or_else(|| Cow::Owned(call_id())),
                    name: call.name.unwrap_or_default(),
                    arguments: call.args.map_or(Cow::Borrowed("{}"), |a| compact_json(a.get())),
                });
            } else if let Some(text) = part.text.filter(|t| !t.is_empty()) {
                append(if part.thought { &mut reasoning } else { &mut content }, text);
            }
        }
        Gathered {
            index: candidate.index.unwrap_or(u32::try_from(position).unwrap_or(u32::MAX)),
            content,
            reasoning,
            finish: finish_reason(candidate.finish_reason.as_deref(), !calls.is_empty()),
            calls,
        }
    }
}

/// Adds a part's text to what is gathered so far (the first text is kept borrowed).
fn append<'a>(into: &mut Option<Cow<'a, str>>, text: Cow<'a, str>) {
    match into {
        None => *into = Some(text),
        Some(gathered) => gathered.to_mut().push_str(&text),
    }
}

/// A Google error answer (any status; `{"error":{"code","message","status","details"}}`, alone
/// or in a one-element array, or anything else) → OpenAI's
/// `{"error":{"message","type","param","code"}}`.
///
/// The upstream's message is kept; the type and code follow the Google status, else the error's
/// code, else `status` (see the [module](super) documentation). A body that is not a Google
/// error gets a message naming the status.
pub fn error_from_gemini(status: u16, body: &[u8]) -> Bytes {
    let error = match body.trim_ascii_start().first() {
        Some(b'{') => serde_json::from_slice::<ErrorBody<'_>>(body).ok().and_then(|b| b.error),
        Some(b'[') => serde_json::from_slice::<Vec<ErrorBody<'_>>>(body)
            .ok()
            .and_then(|list| list.into_iter().next())
            .and_then(|b| b.error),
        _ => None,
    };
    let (google_status, code, message) = match error {
        Some(e) => (e.status, e.code, e.message),
        None => (None, None, None),
    };
    let message = upstream_message(message, status);
    google_error(google_status.as_deref(), code.or(Some(status)), &message).to_body()
}

// ---------------------------------------------------------------------------------------------
// The fields of a Gemini answer that matter
// ---------------------------------------------------------------------------------------------

/// A `GenerateContentResponse` (one stream event, or a whole answer), or Code Assist's envelope
/// of one (`response`), or an error (`error`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Answer<'a> {
    #[serde(borrow, default)]
    pub candidates: Vec<Candidate<'a>>,
    #[serde(borrow, default)]
    pub prompt_feedback: Option<PromptFeedback<'a>>,
    #[serde(default)]
    pub usage_metadata: Option<UsageMetadata>,
    #[serde(borrow, default)]
    pub response_id: Option<Cow<'a, str>>,
    /// Code Assist's envelope.
    #[serde(borrow, default)]
    pub response: Option<Box<Answer<'a>>>,
    #[serde(borrow, default)]
    pub error: Option<GoogleError<'a>>,
}

impl<'a> Answer<'a> {
    /// The enveloped answer, or this one; an error beside the envelope is kept.
    pub fn unwrap_envelope(mut self) -> Answer<'a> {
        match self.response.take() {
            Some(inner) => {
                let mut inner = *inner;
                if inner.error.is_none() {
                    inner.error = self.error;
                }
                inner
            }
            None => self,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Candidate<'a> {
    #[serde(borrow, default)]
    pub content: Option<CandidateContent<'a>>,
    #[serde(borrow, default)]
    pub finish_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    pub index: Option<u32>,
}

#[derive(Deserialize)]
pub(super) struct CandidateContent<'a> {
    #[serde(borrow, default)]
    pub parts: Vec<AnswerPart<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct AnswerPart<'a> {
    #[serde(borrow, default)]
    pub text: Option<Cow<'a, str>>,
    #[serde(default)]
    pub thought: bool,
    #[serde(borrow, default)]
    pub function_call: Option<AnswerCall<'a>>,
}

#[derive(Deserialize)]
pub(super) struct AnswerCall<'a> {
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub args: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PromptFeedback<'a> {
    #[serde(borrow, default)]
    pub block_reason: Option<Cow<'a, str>>,
}

/// A Google error: `{"code": 429, "message": "…", "status": "RESOURCE_EXHAUSTED", "details": […]}`.
#[derive(Deserialize)]
pub(super) struct GoogleError<'a> {
    #[serde(default)]
    pub code: Option<u16>,
    #[serde(borrow, default)]
    pub message: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub status: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(borrow, default)]
    error: Option<GoogleError<'a>>,
}
