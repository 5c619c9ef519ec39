(function(){
  var box = document.getElementById('tok-toggle');
  if (!box) return;
  function apply(){ document.body.classList.toggle('tokens', box.checked); }
  box.addEventListener('change', apply);
  apply();
})();
