"""The page of `relightful serve`: upload a portrait (matte optional) and a background, see paste | result.

One static HTML document; its script posts the same form to `/api/paste` and `/api/harmonize` and shows both PNGs
side by side, or the API's reason when an input is refused.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>relightful</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2em; max-width: 72em; }
  fieldset { display: flex; gap: 2em; flex-wrap: wrap; border: 1px solid #ccc; }
  label { display: flex; flex-direction: column; gap: .3em; }
  figure { margin: 0; } figure img { max-width: 34em; max-height: 34em; }
  #results { display: flex; gap: 1em; margin-top: 1em; }
  #status { margin-top: 1em; } .error { color: #b00020; }
</style>
</head>
<body>
<h1>relightful</h1>
<p>Relight a portrait to match a new background: its lighting's direction, colour and intensity.</p>
<form id="form">
  <fieldset>
    <label>Portrait <input type="file" name="fg" id="fg" accept="image/*" required></label>
    <label>Matte (optional) <input type="file" name="matte" id="matte" accept="image/png,image/*"></label>
    <label>Background <input type="file" name="bg" id="bg" accept="image/*" required></label>
    <label>Seed <input type="number" name="seed" id="seed" value="0" min="0"></label>
  </fieldset>
  <p><button type="submit" id="submit">Relight</button></p>
</form>
<div id="status"></div>
<div id="results">
  <figure><figcaption>paste</figcaption><img id="paste" alt="paste"></figure>
  <figure><figcaption>result</figcaption><img id="result" alt="result"></figure>
</div>
<script>
const form = document.getElementById("form"), status = document.getElementById("status");
async function post(path) {
  const data = new FormData(form);
  if (!document.getElementById("matte").files.length) data.delete("matte");
  const response = await fetch(path, { method: "POST", body: data });
  if (!response.ok) {
    let reason = response.statusText;
    try { reason = (await response.json()).detail; } catch (e) {}
    throw new Error(response.status + ": " + reason);
  }
  return URL.createObjectURL(await response.blob());
}
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  status.className = ""; status.textContent = "relighting...";
  document.getElementById("submit").disabled = true;
  try {
    const [pasted, result] = await Promise.all([post("/api/paste"), post("/api/harmonize")]);
    document.getElementById("paste").src = pasted;
    const img = document.getElementById("result");
    img.onload = () => { status.textContent = "done: " + img.naturalWidth + "x" + img.naturalHeight; };
    img.src = result;
  } catch (err) {
    status.className = "error"; status.textContent = err.message;
  } finally {
    document.getElementById("submit").disabled = false;
  }
});
</script>
</body>
</html>
"""
