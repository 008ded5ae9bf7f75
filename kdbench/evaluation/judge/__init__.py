"""LLM judge: pairwise feedback scores as in MiniLLM's GPT-4 evaluation.

MiniLLM (Gu et al., ICLR 2024, arXiv:2306.08543) asks GPT-4 to compare a model's answer with the gold response
using the Vicuna / FastChat pairwise reviewer prompt (lm-sys/FastChat, fastchat/eval/table/prompt.jsonl,
prompt_id 1; kdbench's own wording is in kdbench/evaluation/prompts/judge_pairwise.txt), and reports
sum(model scores) / sum(gold scores) x 100. Here every item is asked in both orders, (reference, candidate) and
(candidate, reference), so that the judge's preference for one position cancels out.

Two backends sit behind one method, `complete(messages) -> str`: an OpenAI-compatible chat endpoint
(`transport`: httpx, retries with backoff by tenacity, requests from a thread pool) and a local Hugging Face
causal LM (`hf_backend`, greedy). Verdicts are cached on disk keyed by content (`cache`: judge identity, full
rendered messages, generation settings), so a rerun asks nothing twice. The API key is read from the environment
at request time and stored nowhere: not in the config, the backend, the report, the logs, error messages or the
cache.

With no judge configured (or the key's environment variable unset) `judge_pairwise` (`run`) returns a report
marked skipped with the reason, never a score; a configured judge that is skipped says so as a warning. A score
ratio over fewer verdicts than were asked (failed or unparsable ones left out) is marked partial, "n of N"; more
failed verdicts than `max_failed_fraction` of them fail the run (JudgeFailedError, naming the endpoint's last
error).
"""

from kdbench.evaluation.judge.cache import CACHE_VERSION, VerdictCache, verdict_key
from kdbench.evaluation.judge.config import BACKENDS, JudgeConfig, check_max_failed_fraction
from kdbench.evaluation.judge.hf_backend import HFJudgeBackend, load_hf_judge, path_fingerprint
from kdbench.evaluation.judge.prompt import (
    PROMPT_PATH,
    Messages,
    judge_question,
    load_prompt,
    parse_scores,
    render_messages,
)
from kdbench.evaluation.judge.report import CANDIDATE_FIRST, REFERENCE_FIRST, JudgeFailedError, JudgeReport, Verdict
from kdbench.evaluation.judge.run import JudgeBackend, judge_pairwise, judge_skip_reason, make_backend
from kdbench.evaluation.judge.transport import RETRY_STATUSES, JudgeRequestError, OpenAIChatBackend

__all__ = [
    "BACKENDS", "CACHE_VERSION", "CANDIDATE_FIRST", "PROMPT_PATH", "REFERENCE_FIRST", "RETRY_STATUSES",
    "HFJudgeBackend", "JudgeBackend", "JudgeConfig", "JudgeFailedError", "JudgeReport", "JudgeRequestError",
    "Messages", "OpenAIChatBackend", "Verdict", "VerdictCache", "check_max_failed_fraction", "judge_pairwise",
    "judge_question", "judge_skip_reason", "load_hf_judge", "load_prompt", "make_backend", "parse_scores",
    "path_fingerprint", "render_messages", "verdict_key",
]
