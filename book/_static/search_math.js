/* The search page's snippets show a page's text as written, formulas as TeX. Typeset them: split a
   snippet into text and formulas, and replace each formula by MathJax's rendering of it (inline, so a
   display equation does not fill the list). A formula cut in half by the snippet's ends is dropped. */
(() => {
  if (typeof Search === "undefined") return;
  const FORMULA = /\\\(([\s\S]*?)\\\)|\\\[([\s\S]*?)\\\]/g;

  // A snippet begins and ends anywhere in the page's text: remove a formula's half at either end.
  const wholeFormulas = text => {
    const open = text.search(/\\[([]/), close = text.search(/\\[)\]]/);
    if (close > -1 && (open === -1 || close < open)) text = "..." + text.slice(close + 2);
    const lastOpen = Math.max(text.lastIndexOf("\\("), text.lastIndexOf("\\["));
    const lastClose = Math.max(text.lastIndexOf("\\)"), text.lastIndexOf("\\]"));
    if (lastOpen > lastClose) text = text.slice(0, lastOpen) + "...";
    return text;
  };

  const typeset = summary => {
    const text = wholeFormulas(summary.textContent);
    summary.textContent = "";
    let at = 0;
    for (const match of text.matchAll(FORMULA)) {
      summary.append(text.slice(at, match.index));
      summary.append(MathJax.tex2chtml(match[1] ?? match[2], {display: false}));
      at = match.index + match[0].length;
    }
    summary.append(text.slice(at));
    MathJax.startup.document.clear();
    MathJax.startup.document.updateDocument();  // adds the fonts' CSS for what was just typeset
  };

  const makeSearchSummary = Search.makeSearchSummary;
  Search.makeSearchSummary = (htmlText, keywords, anchor) => {
    const summary = makeSearchSummary(htmlText, keywords, anchor);
    if (!summary) return summary;
    if (window.MathJax?.tex2chtml) typeset(summary);
    else if (window.MathJax?.startup?.promise) MathJax.startup.promise.then(() => typeset(summary));
    return summary;
  };
})();
